"""A seeded, WebShop-style product catalogue built in pure Python: the embedded default that needs no download.

The real catalogue is gigabytes of scraped Amazon pages; tests, examples and first runs should not wait for it.
This generator makes products that look and behave like upstream's after `load_products`: the five upstream
categories, Amazon-like titles, breadcrumbs, `price_text` in upstream's exact format, lower-case options, attribute
phrases that also appear in titles and bullet points (so the reward's substring rule can fire), synthetic
instructions in the attribute file's style and a few human-style instructions. Everything comes from one
`random.Random(seed)`, so the same arguments always give the same catalogue.
"""
from __future__ import annotations

import math
import random
import string
from collections.abc import Iterator
from dataclasses import dataclass

from webshop.catalogue import Catalogue, HumanInstruction, Product

BREADCRUMB_SEPARATOR = " \u203a "  # " › ", as in upstream's `product_category`
ASIN_CHARS = string.ascii_uppercase + string.digits
INSTRUCTION_SHARE = 0.45        # products with a synthetic instruction (upstream's attribute file: ~41%)
HUMAN_INSTRUCTION_SHARE = 0.05
PRICE_RANGE_SHARE = 0.22        # of products with options, so ~10% of all products carry a "lo to hi" range
EMPTY_DESCRIPTION_SHARE = 0.2   # upstream leaves ~30% of descriptions empty


@dataclass(frozen=True, slots=True)
class _Kind:
    """One sub-category: the Amazon query its products were scraped with and what such products look like."""

    query: str
    crumbs: tuple[str, ...]      # `product_category` breadcrumb, outermost first
    nouns: tuple[str, ...]       # the product noun that ends a title
    attributes: tuple[str, ...]  # attribute phrases specific to this kind
    options: tuple[str, ...]     # keys of `_OPTION_POOLS` this kind may offer, in page order
    price: tuple[float, float]   # typical price span in dollars


@dataclass(frozen=True, slots=True)
class _Category:
    """One upstream category: its kinds plus the vocabulary every kind in it shares."""

    name: str
    kinds: tuple[_Kind, ...]
    attributes: tuple[str, ...]   # shared attribute phrases
    descriptors: tuple[str, ...]  # single title words placed before the noun
    tails: tuple[str, ...]        # optional phrases ending a title
    claims: tuple[str, ...]       # sentences for bullet points and descriptions
    option_share: float           # share of products offering options (fashion almost always does)


# Option name and values (lower-case, in page order). Kinds draw a contiguous run, as sizes are listed on pages.
_OPTION_POOLS: dict[str, tuple[str, tuple[str, ...]]] = {
    "color": ("color", ("black", "white", "navy blue", "gray", "red", "pink", "beige", "brown", "green",
                        "light blue", "burgundy", "khaki")),
    "shade": ("color", ("clear", "nude", "pink", "coral", "berry", "red", "mauve")),
    "device color": ("color", ("black", "white", "silver", "space gray", "blue", "red")),
    "finish": ("color", ("natural", "walnut", "espresso", "white", "black", "gray oak", "rustic brown")),
    "apparel size": ("size", ("x-small", "small", "medium", "large", "x-large", "xx-large", "3x-large")),
    "shoe size": ("size", ("6", "6.5", "7", "7.5", "8", "8.5", "9", "9.5", "10", "11")),
    "liquid size": ("size", ("1 fl oz", "1.7 fl oz", "3.4 fl oz", "8 fl oz", "12 fl oz (pack of 2)", "16.9 fl oz")),
    "pack size": ("pack size", ("pack of 1", "pack of 2", "pack of 3", "pack of 4", "pack of 6", "pack of 12")),
    "scent": ("scent", ("unscented", "lavender", "coconut", "vanilla", "eucalyptus mint", "citrus")),
    "mint flavor": ("flavor name", ("fresh mint", "cool mint", "spearmint", "cinnamon", "charcoal mint")),
    "mic style": ("style", ("standard", "pro", "bundle", "with stand", "with pop filter")),
    "cable length": ("size", ("3 feet", "6 feet", "10 feet", "15 feet", "25 feet")),
    "furniture style": ("style", ("modern", "farmhouse", "mid-century", "industrial", "traditional")),
    "pattern name": ("pattern name", ("solid", "striped", "floral", "plaid", "geometric")),
    "pillow size": ("size", ("12 x 20 inch", "16 x 16 inch", "18 x 18 inch", "20 x 20 inch", "24 x 24 inch")),
    "bed size": ("size", ("twin", "twin xl", "full", "queen", "king", "california king")),
    "mattress height": ("style", ("8 inch", "10 inch", "12 inch", "14 inch")),
    "blanket size": ("size", ("50 x 60 inch", "60 x 80 inch", "90 x 90 inch", "108 x 90 inch")),
    "pot size": ("size", ("4 inch", "6 inch", "8 inch", "10 inch", "12 inch")),
    "tea flavor": ("flavor name", ("original", "jasmine", "mint", "lemon ginger", "peach", "honey")),
    "tea count": ("size", ("20 count", "40 count", "100 count", "20 count (pack of 6)")),
    "snack flavor": ("flavor name", ("original", "sea salt", "cheddar", "sour cream & onion", "barbecue",
                                     "everything")),
    "sweet flavor": ("flavor name", ("vanilla", "dark chocolate", "caramel", "hazelnut", "peanut butter",
                                     "cinnamon")),
    "food size": ("size", ("4 ounce (pack of 1)", "8 ounce (pack of 2)", "12 ounce (pack of 3)",
                           "16 ounce (pack of 4)", "12 count", "24 count")),
    "oil size": ("size", ("16.9 fl oz", "25.3 fl oz", "33.8 fl oz", "50.7 fl oz", "1 gallon")),
}

# Attribute phrases that read as a part ("... with shea butter") or a use ("... for living room") in a synthetic
# instruction; every other phrase is a modifier placed before the query ("gluten free green tea").
_WITH_ATTRIBUTES = frozenset({
    "shea butter", "vitamin e", "argan oil", "hyaluronic acid", "synthetic hair", "rose gold", "soft bristles",
    "carrying case", "tripod stand", "compact design", "stereo sound", "usb port", "quick release",
    "aluminum alloy", "button closure", "drawstring closure", "zipper closure", "rubber sole", "arch support",
    "memory foam", "cotton heather", "needle sleeve", "short sleeve", "long sleeve", "v neck", "classic fit",
    "fashion design", "solid wood", "steel frame", "storage space", "hidden zipper", "glass shade",
    "touch control", "fleece throw", "drainage hole", "plant stand", "rich flavor", "resealable bag",
    "glass bottle", "natural ingredients",
})
_FOR_ATTRIBUTES = frozenset({
    "dry lips", "dry hair", "dry skin", "sensitive skin", "sensitive teeth", "fresh breath", "oral hygiene",
    "nail art", "everyday wear", "living room", "healthy snack", "pressure relief", "hair growth",
})

_BRAND_HEADS = ("Al", "Bel", "Cor", "Dan", "El", "Fen", "Gro", "Hal", "Iv", "Jun", "Kel", "Lu", "Mar", "Nor",
                "Ov", "Pri", "Quin", "Ros", "Sol", "Tav", "Ul", "Ver", "Wyn", "Xen", "Yar", "Zen")
_BRAND_TAILS = ("ara", "ex", "ify", "io", "ona", "ora", "ix", "ly", "ova", "ux", "eo", "ant", "ia", "ico")
_TITLE_ACRONYMS = frozenset({"usb", "hdmi", "gmo", "spf"})
_HUMAN_OPENERS = ("i need", "i am looking for", "i want", "i'm looking for", "find me")

_CATEGORIES: tuple[_Category, ...] = (
    _Category(
        name="beauty",
        kinds=(
            _Kind("lip balm", ("Beauty & Personal Care", "Skin Care", "Lip Care", "Balms & Moisturizers"),
                  ("Lip Balm", "Tinted Lip Balm", "Lip Moisturizer Stick"),
                  ("dry lips", "shea butter", "vitamin e"), ("shade", "pack size"), (2.5, 15.0)),
            _Kind("shampoo & conditioner",
                  ("Beauty & Personal Care", "Hair Care", "Shampoo & Conditioner", "Shampoo & Conditioner Sets"),
                  ("Shampoo and Conditioner Set", "Hair Shampoo", "Hair Conditioner"),
                  ("dry hair", "sulfate free", "argan oil", "hair growth"), ("scent", "liquid size"), (8.0, 45.0)),
            _Kind("body lotion", ("Beauty & Personal Care", "Skin Care", "Body", "Moisturizers", "Lotions"),
                  ("Body Lotion", "Body Cream", "Hand and Body Lotion"),
                  ("dry skin", "sensitive skin", "fragrance free", "hyaluronic acid"), ("scent", "liquid size"),
                  (5.0, 35.0)),
            _Kind("makeup brushes",
                  ("Beauty & Personal Care", "Tools & Accessories", "Makeup Brushes & Tools", "Brush Sets"),
                  ("Makeup Brush Set", "Foundation Brush", "Kabuki Brush"),
                  ("synthetic hair", "rose gold", "soft bristles"), ("color",), (6.0, 40.0)),
            _Kind("toothpaste", ("Beauty & Personal Care", "Oral Care", "Toothpaste"),
                  ("Whitening Toothpaste", "Toothpaste", "Kids Toothpaste"),
                  ("fresh breath", "sensitive teeth", "fluoride free", "oral hygiene"), ("mint flavor", "pack size"),
                  (3.0, 20.0)),
            _Kind("nail polish",
                  ("Beauty & Personal Care", "Foot, Hand & Nail Care", "Nail Art & Polish", "Nail Polish"),
                  ("Nail Polish", "Gel Nail Polish Set", "Nail Lacquer"),
                  ("quick dry", "nail art", "non toxic"), ("shade", "pack size"), (4.0, 30.0)),
        ),
        attributes=("cruelty free", "paraben free", "long lasting", "easy use", "natural ingredients"),
        descriptors=("Moisturizing", "Nourishing", "Gentle", "Professional", "Daily", "Lightweight", "Natural"),
        tails=("for Women", "for Men and Women", "for Home and Travel"),
        claims=("Gentle formula suitable for daily use.", "Dermatologist tested and free from harsh chemicals.",
                "Compact packaging fits easily in a purse or travel bag.",
                "Made with carefully selected ingredients for visible results.", "Never tested on animals.",
                "Leaves a light, pleasant finish without feeling greasy.",
                "Suitable for men and women of all ages.", "Backed by our 30-day satisfaction guarantee."),
        option_share=0.35,
    ),
    _Category(
        name="electronics",
        kinds=(
            _Kind("usb microphones",
                  ("Electronics", "Computers & Accessories", "Computer Accessories & Peripherals",
                   "Audio & Video Accessories", "Computer Microphones"),
                  ("USB Microphone", "Condenser Microphone", "Podcast Microphone"),
                  ("noise cancelling", "plug play", "tripod stand"), ("device color", "mic style"), (20.0, 150.0)),
            _Kind("bluetooth speakers",
                  ("Electronics", "Portable Audio & Video", "Portable Speakers & Docks",
                   "Portable Bluetooth Speakers"),
                  ("Bluetooth Speaker", "Wireless Speaker", "Outdoor Speaker"),
                  ("stereo sound", "wireless bluetooth", "water resistant", "easy carry"), ("device color",),
                  (15.0, 200.0)),
            _Kind("hdmi cables",
                  ("Electronics", "Accessories & Supplies", "Audio & Video Accessories", "Cables", "HDMI Cables"),
                  ("HDMI Cable", "HDMI 2.1 Cable", "Braided HDMI Cable"),
                  ("high speed", "gold plated", "high definition"), ("cable length", "pack size"), (6.0, 30.0)),
            _Kind("headphones",
                  ("Electronics", "Headphones, Earbuds & Accessories", "Headphones", "Over-Ear Headphones"),
                  ("Over-Ear Headphones", "Wireless Headphones", "Studio Headphones"),
                  ("noise cancelling", "stereo sound", "wireless bluetooth", "hands free"), ("device color",),
                  (20.0, 300.0)),
            _Kind("tripods & monopods", ("Electronics", "Camera & Photo", "Tripods & Monopods", "Complete Tripods"),
                  ("Camera Tripod", "Travel Tripod", "Phone Tripod Stand"),
                  ("aluminum alloy", "quick release", "carrying case", "easy carry"), ("device color",),
                  (15.0, 120.0)),
            _Kind("wall chargers",
                  ("Electronics", "Cell Phones & Accessories", "Accessories", "Chargers & Power Adapters",
                   "Wall Chargers"),
                  ("Wall Charger", "USB C Wall Charger", "Charging Block"),
                  ("fast charging", "usb port", "compact design"), ("device color", "pack size"), (8.0, 45.0)),
        ),
        attributes=("easy install", "easy use", "high performance", "high quality"),
        descriptors=("Portable", "Upgraded", "Compact", "Universal", "Premium", "Professional", "Lightweight"),
        tails=("for Home and Office", "for Travel", "with 2 Year Warranty"),
        claims=("Works with most phones, tablets and computers.", "Sturdy build tested for everyday use.",
                "Setup takes minutes with no extra software.",
                "Compact design saves space on your desk or in your bag.", "Includes a detailed user manual.",
                "Backed by an 18-month warranty and friendly customer support.",
                "Energy efficient design runs cool for hours.", "Every unit is quality checked before shipping."),
        option_share=0.35,
    ),
    _Category(
        name="fashion",
        kinds=(
            _Kind("women's shorts", ("Clothing, Shoes & Jewelry", "Women", "Clothing", "Shorts"),
                  ("Women's Denim Shorts", "Women's Bermuda Shorts", "Women's Running Shorts"),
                  ("machine wash", "high waist", "elastic waist", "drawstring closure"), ("color", "apparel size"),
                  (12.0, 45.0)),
            _Kind("men's shorts", ("Clothing, Shoes & Jewelry", "Men", "Clothing", "Shorts"),
                  ("Men's Cargo Shorts", "Men's Chino Shorts", "Men's Athletic Shorts"),
                  ("machine wash", "elastic waist", "button closure", "quick drying"), ("color", "apparel size"),
                  (15.0, 50.0)),
            _Kind("women's dresses", ("Clothing, Shoes & Jewelry", "Women", "Clothing", "Dresses", "Casual"),
                  ("Women's Maxi Dress", "Women's Wrap Dress", "Women's Midi Dress"),
                  ("v neck", "short sleeve", "high waist", "hand wash"), ("color", "apparel size", "pattern name"),
                  (18.0, 80.0)),
            _Kind("men's t-shirts & tanks", ("Clothing, Shoes & Jewelry", "Men", "Clothing", "Shirts", "T-Shirts"),
                  ("Men's T-Shirt", "Men's Crew Neck Tee", "Men's Tank Top"),
                  ("machine wash", "classic fit", "cotton heather", "needle sleeve"), ("color", "apparel size"),
                  (9.0, 30.0)),
            _Kind("women's fashion sneakers", ("Clothing, Shoes & Jewelry", "Women", "Shoes", "Fashion Sneakers"),
                  ("Women's Sneakers", "Women's Walking Shoes", "Women's Slip-On Sneakers"),
                  ("rubber sole", "arch support", "memory foam", "non slip"), ("color", "shoe size"), (25.0, 90.0)),
            _Kind("men's jackets & coats", ("Clothing, Shoes & Jewelry", "Men", "Clothing", "Jackets & Coats"),
                  ("Men's Puffer Jacket", "Men's Windbreaker", "Men's Fleece Jacket"),
                  ("winter warm", "zipper closure", "water resistant", "long sleeve"), ("color", "apparel size"),
                  (30.0, 150.0)),
        ),
        attributes=("everyday wear", "comfortable fit", "fashion design"),
        descriptors=("Casual", "Classic", "Lightweight", "Stretch", "Summer", "Vintage", "Soft", "Trendy"),
        tails=("for Casual Daily Wear", "for Work and Travel", "for All Seasons"),
        claims=("Soft, breathable fabric keeps you comfortable all day.", "Tailored cut that flatters every body type.",
                "Reinforced stitching holds up wash after wash.", "Easy to pair with your favorite everyday outfits.",
                "Please check the size chart before ordering.", "Colors stay bright after repeated washing.",
                "Lightweight enough to pack for travel.", "Great gift for family and friends."),
        option_share=0.8,
    ),
    _Category(
        name="garden",
        kinds=(
            _Kind("console tables",
                  ("Home & Kitchen", "Furniture", "Living Room Furniture", "Tables", "Sofa & Console Tables"),
                  ("Console Table", "Sofa Table", "Entryway Table"),
                  ("living room", "solid wood", "steel frame", "storage space"), ("finish", "furniture style"),
                  (60.0, 400.0)),
            _Kind("decorative pillows",
                  ("Home & Kitchen", "Home Décor Products", "Decorative Pillows, Inserts & Covers",
                   "Throw Pillow Covers"),
                  ("Throw Pillow Covers", "Cushion Case", "Decorative Pillow Cover"),
                  ("living room", "double sided", "super soft", "hidden zipper"),
                  ("color", "pillow size", "pattern name"), (8.0, 35.0)),
            _Kind("mattresses",
                  ("Home & Kitchen", "Furniture", "Bedroom Furniture", "Mattresses & Box Springs", "Mattresses"),
                  ("Memory Foam Mattress", "Hybrid Mattress", "Innerspring Mattress"),
                  ("memory foam", "medium firm", "fully assembled", "pressure relief"),
                  ("bed size", "mattress height"), (150.0, 900.0)),
            _Kind("table lamps", ("Home & Kitchen", "Lighting & Ceiling Fans", "Lamps & Shades", "Table Lamps"),
                  ("Table Lamp", "Bedside Lamp", "Nightstand Lamp"),
                  ("living room", "usb port", "glass shade", "touch control"), ("finish", "furniture style"),
                  (20.0, 120.0)),
            _Kind("throw blankets", ("Home & Kitchen", "Bedding", "Blankets & Throws", "Throws"),
                  ("Throw Blanket", "Fleece Blanket", "Sherpa Throw"),
                  ("super soft", "machine washable", "living room", "fleece throw"), ("color", "blanket size"),
                  (15.0, 60.0)),
            _Kind("planters",
                  ("Patio, Lawn & Garden", "Gardening & Lawn Care", "Pots, Planters & Container Accessories",
                   "Planters"),
                  ("Ceramic Planter", "Plant Pot", "Hanging Planter"),
                  ("drainage hole", "indoor outdoor", "plant stand"), ("color", "pot size"), (10.0, 70.0)),
        ),
        attributes=("easy clean", "easy assemble", "space saving", "eco friendly"),
        descriptors=("Modern", "Rustic", "Farmhouse", "Minimalist", "Decorative", "Handmade", "Elegant", "Classic"),
        tails=("for Bedroom and Living Room", "for Home Decor", "for Small Apartments"),
        claims=("Sturdy construction built to last for years.", "Simple assembly with all hardware included.",
                "Neutral design blends with any home decor.", "Wipe clean with a damp cloth.",
                "Carefully packed to arrive in perfect condition.", "Makes a thoughtful housewarming gift.",
                "Measure your space before ordering.", "Backed by a one-year warranty."),
        option_share=0.35,
    ),
    _Category(
        name="grocery",
        kinds=(
            _Kind("green tea", ("Grocery & Gourmet Food", "Beverages", "Coffee, Tea & Cocoa", "Tea", "Green Tea"),
                  ("Green Tea Bags", "Matcha Green Tea Powder", "Loose Leaf Green Tea"),
                  ("certified organic", "individually wrapped", "low calorie"), ("tea flavor", "tea count"),
                  (5.0, 30.0)),
            _Kind("snack crackers", ("Grocery & Gourmet Food", "Snacks & Sweets", "Snack Foods", "Crackers"),
                  ("Snack Crackers", "Whole Grain Crackers", "Cheese Crackers"),
                  ("whole grain", "low fat", "resealable bag"), ("snack flavor", "food size"), (3.0, 25.0)),
            _Kind("ground coffee",
                  ("Grocery & Gourmet Food", "Beverages", "Coffee, Tea & Cocoa", "Coffee", "Ground Coffee"),
                  ("Ground Coffee", "Medium Roast Ground Coffee", "Dark Roast Ground Coffee"),
                  ("fair trade", "certified organic", "rich flavor"), ("sweet flavor", "food size"), (7.0, 35.0)),
            _Kind("protein bars",
                  ("Grocery & Gourmet Food", "Snacks & Sweets", "Snack Foods", "Bars", "Nutrition Bars"),
                  ("Protein Bars", "Nutrition Bars", "Protein Snack Bars"),
                  ("high protein", "low sugar", "keto friendly", "chocolate covered"), ("sweet flavor", "food size"),
                  (10.0, 40.0)),
            _Kind("dried fruits & raisins", ("Grocery & Gourmet Food", "Snacks & Sweets", "Dried Fruits & Raisins"),
                  ("Dried Mango Slices", "Organic Raisins", "Dried Fruit Mix"),
                  ("no sugar added", "resealable bag", "healthy snack"), ("food size",), (5.0, 30.0)),
            _Kind("olive oil",
                  ("Grocery & Gourmet Food", "Pantry Staples", "Cooking & Baking", "Oils, Vinegars & Salad Dressings",
                   "Olive Oil"),
                  ("Extra Virgin Olive Oil", "Olive Oil", "Cooking Olive Oil"),
                  ("cold pressed", "glass bottle", "single origin"), ("oil size",), (8.0, 40.0)),
        ),
        attributes=("gluten free", "non gmo", "dairy free", "plant based", "natural ingredients"),
        descriptors=("Gourmet", "Premium", "Artisan", "Classic", "Fresh", "Imported", "Bulk"),
        tails=("Value Pack", "Family Size", "Gift Box"),
        claims=("Made in small batches for consistent taste.", "Packed fresh and sealed to lock in flavor.",
                "No artificial colors or preservatives.", "A simple, wholesome choice for the whole family.",
                "Store in a cool, dry place.", "Perfect for the office, school lunches or road trips.",
                "Sourced from trusted family farms.", "Enjoy it on its own or share with friends."),
        option_share=0.35,
    ),
)


def _title_case(phrase: str) -> str:
    """Title-case an attribute phrase; lower-casing the title gives the phrase back for the reward's check."""
    return " ".join(w.upper() if w in _TITLE_ACRONYMS else w.capitalize() for w in phrase.split())


def _brand(rng: random.Random) -> str:
    """A made-up brand word; a quarter are all capitals, as many marketplace brands are."""
    brand = rng.choice(_BRAND_HEADS) + rng.choice(_BRAND_TAILS)
    return brand.upper() if rng.random() < 0.25 else brand


def _price(rng: random.Random, low: float, high: float) -> float:
    """A shelf price: log-uniform over the span, ending in .99, .49, .95 or .00 like real listings."""
    dollars = int(math.exp(rng.uniform(math.log(low), math.log(high))))
    return round(dollars + rng.choice((0.99, 0.99, 0.49, 0.95, 0.0)), 2)


def _options(rng: random.Random, kind: _Kind) -> dict[str, list[str]]:
    """1-3 option groups (fewer if the kind offers fewer), each a contiguous run of 2-6 values of its pool."""
    count = min(len(kind.options), rng.choices((1, 2, 3), weights=(6, 3, 1))[0])
    options = {}
    for key in sorted(rng.sample(kind.options, count), key=kind.options.index):
        name, values = _OPTION_POOLS[key]
        size = rng.randint(2, min(6, len(values)))
        start = rng.randint(0, len(values) - size)
        options[name] = list(values[start:start + size])
    return options


def _title(rng: random.Random, category: _Category, brand: str, noun: str, shown: list[str]) -> str:
    """Brand, attribute phrases, descriptor words, noun and maybe a tail: 6-20 words like Amazon titles."""
    tail = rng.choice(category.tails) if rng.random() < 0.5 else ""
    fixed = len(f"{brand} {' '.join(shown)} {noun} {tail}".split())
    descriptors = rng.sample(category.descriptors, max(rng.randint(1, 2), 6 - fixed))
    return " ".join([brand, *map(_title_case, shown), *descriptors, noun, tail]).strip()


def _wanted(noun: str, attributes: list[str]) -> str:
    """`noun` with attributes where a shopper puts them: "<modifiers> <noun> with <parts> for <uses>"."""
    before = [a for a in attributes if a not in _WITH_ATTRIBUTES and a not in _FOR_ATTRIBUTES]
    parts = [a for a in attributes if a in _WITH_ATTRIBUTES]
    uses = [a for a in attributes if a in _FOR_ATTRIBUTES]
    text = (", ".join(before) + " " if before else "") + noun
    if parts:
        text += " with " + ", ".join(parts)
    if uses:
        text += " for " + ", ".join(uses)
    return text


def _human_instruction(rng: random.Random, category: str, noun: str, attributes: list[str],
                       options: dict[str, list[str]]) -> HumanInstruction:
    """A crowd-worker-style request ("i need a long lasting lip balm in pink") naming 1-2 attributes and
    one value from each of up to two option groups."""
    wanted = rng.sample(attributes, rng.randint(1, min(2, len(attributes))))
    groups = rng.sample(list(options), rng.randint(min(1, len(options)), min(2, len(options))))
    values = [rng.choice(options[name]) for name in groups]
    phrase = _wanted(noun.lower(), wanted)
    if category == "grocery" or (noun.endswith("s") and not noun.endswith("ss")):  # plural nouns
        article = "some"
    else:
        article = "an" if phrase[0] in "aeiou" else "a"
    text = f"{rng.choice(_HUMAN_OPENERS)} {article} {phrase}" + (f" in {' and '.join(values)}" if values else "")
    return HumanInstruction(text, wanted, values)


def _product(rng: random.Random, asin: str, category: _Category) -> Product:
    """One product of a random kind; some attributes go into the title and bullet headlines verbatim."""
    kind = rng.choice(category.kinds)
    noun = rng.choice(kind.nouns)
    brand = _brand(rng)
    attributes = rng.sample(kind.attributes + category.attributes, rng.randint(2, 5))
    in_title = rng.sample(attributes, rng.choice((0, 1, 1, 2)))
    title = _title(rng, category, brand, noun, in_title)

    bullet_count = rng.randint(2, 5)
    rest = [a for a in attributes if a not in in_title]
    headlined = rng.sample(rest, rng.randint(0, min(len(rest), bullet_count)))
    sentences = rng.sample(category.claims, bullet_count + 3)
    bullets = [f"{a.upper()}: {s}" for a, s in zip(headlined, sentences)] + sentences[len(headlined):bullet_count]
    description = ("" if rng.random() < EMPTY_DESCRIPTION_SHARE
                   else " ".join(sentences[bullet_count:bullet_count + rng.randint(1, 3)]))

    options = _options(rng, kind) if rng.random() < category.option_share else {}
    low = _price(rng, *kind.price)
    if options and rng.random() < PRICE_RANGE_SHARE:
        pricing = [low, _price(rng, low + 1, (low + 1) * rng.uniform(1.2, 2.0))]
        price_text = f"${pricing[0]} to ${pricing[1]}"
    else:
        pricing, price_text = [low], f"${low}"

    instruction_text = instruction_attributes = None
    if rng.random() < INSTRUCTION_SHARE:
        instruction_attributes = rng.sample(attributes, rng.randint(1, min(3, len(attributes))))
        instruction_text = "Find me " + _wanted(kind.query, instruction_attributes)  # attribute-file style
    human = ([_human_instruction(rng, category.name, noun, attributes, options)]
             if rng.random() < HUMAN_INSTRUCTION_SHARE else [])

    return Product(
        asin=asin, title=title, description=description, bullet_points=bullets, pricing=pricing,
        price_text=price_text, options=options, attributes=attributes, category=category.name,
        query=kind.query.lower().strip(), product_category=BREADCRUMB_SEPARATOR.join(kind.crumbs),
        instruction_text=instruction_text, instruction_attributes=instruction_attributes, human_instructions=human,
    )


def iter_generated(num_products: int = 300, seed: int = 0) -> Iterator[Product]:
    """`num_products` products from `random.Random(seed)`, one at a time, categories in equal shares (±1),
    shuffled like upstream's `items_shuffle`; same arguments, identical products."""
    if num_products < 0:
        raise ValueError(f"num_products must be >= 0, got {num_products}")
    rng = random.Random(seed)
    categories = [_CATEGORIES[i % len(_CATEGORIES)] for i in range(num_products)]
    rng.shuffle(categories)
    asins: set[str] = set()
    for category in categories:
        asin = "B0" + "".join(rng.choices(ASIN_CHARS, k=8))
        while asin in asins:
            asin = "B0" + "".join(rng.choices(ASIN_CHARS, k=8))
        asins.add(asin)
        yield _product(rng, asin, category)


def generate_catalogue(num_products: int = 300, seed: int = 0) -> Catalogue:
    """`iter_generated`'s products as an in-memory catalogue."""
    return Catalogue.from_products(f"generated-{num_products}-seed{seed}", iter_generated(num_products, seed))
