"""The reward function against upstream WebShop (`web_agent_site/engine/goal.py` at HEAD, `normalize.py`).

Sources of the expectations: ../shared/webshop/UPSTREAM.md sections 2 and 8, upstream's own
`tests/web-agent-site/engine/test_goal.py`, and the nine MTurk play logs in
../shared/webshop/human_trajectory_logs (the rewards the original web app computed in April 2022).
"""
from __future__ import annotations

import ast
import json
from fractions import Fraction
from pathlib import Path

import pytest
from thefuzz import fuzz

from webshop.catalogue import Product
from webshop.goals import NO_PRICE_CAP, Goal
from webshop.reward import (COLOR_SET, attribute_matches, get_reward, normalize_color, option_matches,
                            title_nouns, type_reward)

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "webshop"
needs_data = pytest.mark.skipif(
    not SHARED.is_dir(),
    reason="../shared/webshop not found: the real WebShop data is read from there, never committed")


def make_product(title="", *, query="q", product_category="a › b › c", attributes=(), bullet_points=(),
                 description="", options=None, asin="B000000000") -> Product:
    return Product(asin=asin, title=title, description=description, bullet_points=list(bullet_points),
                   pricing=[10.0], price_text="$10.0", options=options or {}, attributes=list(attributes),
                   category="beauty", query=query, product_category=product_category)


def make_goal(name="", *, query="q", product_category="a › b › c", attributes=(), goal_options=None,
              price_upper=NO_PRICE_CAP, kind="synthetic", asin="B000000000") -> Goal:
    return Goal(asin=asin, instruction_text="i need something", attributes=list(attributes),
                goal_options={} if goal_options is None else goal_options, price_upper=price_upper,
                weight=1.0, name=name, category="beauty", query=query, product_category=product_category,
                kind=kind)


# --------------------------------------------------------------------------------------------------
# normalize_color (upstream normalize.py)

# Upstream `web_agent_site/engine/normalize.py` COLOR_SET, verbatim and in its order.
UPSTREAM_COLOR_SET = [
    'alabaster', 'apricot', 'aqua', 'ash', 'asphalt', 'azure',
    'banana', 'beige', 'black', 'blue', 'blush', 'bordeaux', 'bronze',
    'brown', 'burgundy', 'camel', 'camo', 'caramel', 'champagne',
    'charcoal', 'cheetah', 'chestnut', 'chocolate', 'christmas', 'coffee',
    'cognac', 'copper', 'coral', 'cranberry', 'cream', 'crystal', 'dark',
    'denim', 'eggplant', 'elephant', 'espresso', 'fuchsia', 'gold', 'granite',
    'grape', 'graphite', 'grass', 'gray', 'green', 'grey', 'heather', 'indigo',
    'ivory', 'ivy', 'khaki', 'lavender', 'lemon', 'leopard', 'light', 'lilac',
    'lime', 'magenta', 'maroon', 'mauve', 'merlot', 'midnight', 'mint', 'mocha',
    'multicolor', 'mushroom', 'mustard', 'natural', 'navy', 'nude', 'olive',
    'orange', 'peach', 'pewter', 'pink', 'plum', 'purple', 'rainbow', 'red',
    'rose', 'royal', 'rust', 'sand', 'sapphire', 'seashell', 'silver', 'skull',
    'slate', 'steel', 'stone', 'stonewash', 'sunflower', 'tan', 'taupe', 'teal',
    'tiger', 'turquoise', 'violet', 'walnut', 'wheat', 'white', 'wine', 'yellow',
]


def test_color_set_is_upstreams_102_colours_in_order():
    assert len(COLOR_SET) == 102
    assert list(COLOR_SET) == UPSTREAM_COLOR_SET


@pytest.mark.parametrize("value, expected", [
    ("", ""),
    ("black forest", "black"),
    ("violet lavender", "lavender"),      # lavender precedes violet in COLOR_SET: list order wins
    ("steelivy fuchsia", "fuchsia"),      # fuchsia precedes ivy and steel
    ("123alabaster", "alabaster"),        # plain substring test, no word boundary
    ("webshop", "webshop"),               # no colour: unchanged
    ("black | blue", "black"),
    ("dark brown", "brown"),              # 'brown' precedes 'dark'
    ("rectangular", "tan"),               # rec-TAN-gular: substring quirk
    ("black137", "black"),
])
def test_normalize_color_returns_first_colour_substring(value, expected):
    assert normalize_color(value) == expected


def test_normalize_color_on_tuple_fires_only_on_an_exact_colour_element():
    # Synthetic goal options reach normalize_color as (name, value) tuples: `c in tuple` is element equality.
    assert normalize_color(("color", "black")) == "black"
    assert normalize_color(("color", "navy")) == "navy"
    assert normalize_color(("color", "black137")) == ("color", "black137")
    assert normalize_color(("color", "navy | red")) == ("color", "navy | red")
    assert normalize_color(("item shape", "rectangular")) == ("item shape", "rectangular")
    assert normalize_color(("size", "x-large")) == ("size", "x-large")


# --------------------------------------------------------------------------------------------------
# Option matching (UPSTREAM.md 2.3)

# purchased value, goal option, raw thefuzz token_set_ratio, counted by option_matches (normalisation included)
OPTION_TABLE = [
    ("XL", ("size", "XL"), 100, True),
    ("large", ("size", "x-large"), 100, True),     # the tuple is stringified: "size x large" contains "large"
    ("x-large", ("size", "large"), 83, False),
    ("small", "x-small", 100, True),
    ("pack of 12", "12 pack", 100, True),
    ("black | blue", ("color", "black"), 67, True),  # 67 raw, but both sides normalise to 'black'
    ("essential oil", "essential oils", 96, True),
    ("black137", ("color", "black137"), 100, False),  # purchased side normalises to 'black', goal tuple does not
    ("abcd", "abc", 86, True),                      # just above the threshold
    ("abcdefghijklmno", "abcdefghijk", 85, False),  # exactly 85: the threshold is strict (> 85)
    # str(tuple) is a repr: a non-breaking space becomes the text '\\xa0' ("army xa0green"), while thefuzz's
    # force_ascii simply drops it from a plain string ("armygreen")
    ("army\xa0green", ("color", "army\xa0green"), 64, False),
]


@pytest.mark.parametrize("purchased, goal, score, matched", OPTION_TABLE)
def test_option_matching_quirk_table(purchased, goal, score, matched):
    assert fuzz.token_set_ratio(purchased, goal) == score
    assert option_matches([purchased], [goal]) == int(matched)


def test_option_matches_upstream_cases():
    # upstream test_goal.py::test_get_option_reward (HEAD signature: purchased values, goal options)
    assert option_matches(["pack of 12", "grey", "XL"], ["grey", "XL", "pack of 12"]) == 3
    assert option_matches(["pack of 12", "blue", "XL"], ["grey", "XL", "pack of 12"]) == 2
    assert option_matches(["pack of 12", "powder snow", "XL"], ["cool powder snow", "XL", "pack of 12"]) == 3
    assert option_matches(["goal 1", "goal 2"], []) == 0
    assert option_matches([], ["goal 1", "goal 2"]) == 0


def test_each_goal_option_counts_at_most_once():
    assert option_matches(["red", "red", "dark red"], ["red"]) == 1
    # ...but one purchased value can satisfy several goal options
    assert option_matches(["large"], [("size", "large"), ("size", "x-large")]) == 2


# --------------------------------------------------------------------------------------------------
# Type reward (UPSTREAM.md 2.1)

# Nouns that en_core_web_sm tags NOUN in a comma-separated list; titles built from them have a known noun list.
NOUNS = ("sofa couch table chair lamp pillow blanket mirror shelf basket candle bottle towel carpet curtain "
         "cushion drawer desk bench stool vase clock rug kettle").split()


def noun_titles(k: int, n: int) -> tuple[str, str]:
    """(purchased title, goal title) whose title_score is exactly k/n."""
    goal, purchased = ", ".join(NOUNS[:n]), ", ".join(NOUNS[:k])
    assert title_nouns(goal) == tuple(NOUNS[:n]) and title_nouns(purchased) == tuple(NOUNS[:k])
    return purchased, goal


def r_type_for(k, n, query_match=False, category_match=False):
    purchased, desired = noun_titles(k, n)
    product = make_product(purchased, query="q" if query_match else "other",
                           product_category="a › b › x" if category_match else "a › y › z")
    info = type_reward(product, make_goal(desired, query="q", product_category="a › b › c"))
    assert info["query_match"] is query_match and info["category_match"] is category_match
    assert info["title_score"] == k / n
    return info["r_type"]


def test_r_type_rule_order():
    assert r_type_for(1, 1) == 1.0                          # title_score 1
    assert r_type_for(1, 4) == 1.0                          # 0.25 > 0.2 alone is enough
    assert r_type_for(1, 5) == 0.5                          # 0.2 is not > 0.2, nothing else matches
    assert r_type_for(1, 8) == 0.5                          # 0.125
    assert r_type_for(1, 8, query_match=True) == 1.0
    assert r_type_for(1, 8, category_match=True) == 1.0
    assert r_type_for(1, 11, query_match=True, category_match=True) == 0.1   # < 0.1 overrides the matches
    assert r_type_for(1, 10, query_match=True) == 1.0       # 0.1 is not < 0.1
    assert r_type_for(0, 3, query_match=True, category_match=True) == 0.0    # 0 overrides everything


def test_title_score_denominator_keeps_duplicate_nouns():
    goal = make_goal("sofa, sofa, table, lamp")
    assert title_nouns(goal.name) == ("sofa", "sofa", "table", "lamp")
    info = type_reward(make_product("sofa, table, lamp"), goal)
    assert info["title_score"] == 3 / 4                      # the product's own title cannot reach 1


def test_goal_title_without_nouns_scores_0_2():
    goal = make_goal("very quickly", query="q")
    assert title_nouns(goal.name) == ()
    assert type_reward(make_product("sofa", query="other", product_category="x › y"), goal) == dict(
        r_type=0.5, query_match=False, category_match=False, title_score=0.2)
    assert type_reward(make_product("sofa", query="q"), goal)["r_type"] == 1.0


@pytest.mark.parametrize("purchased_category, match", [
    ("a › b › c", True), ("b › c › a", True), ("d › e › f", False), ("a › d › b", True),
    ("a › a › b", True), ("a › a › d", False), ("a›b", True), ("  a ›  b  ", True),
])
def test_category_match_needs_two_shared_parts(purchased_category, match):
    # upstream test_goal.py::test_get_type_reward category cases, plus whitespace stripping
    info = type_reward(make_product("sofa", product_category=purchased_category),
                       make_goal("sofa", product_category="a › b › c"))
    assert info["category_match"] is match


def test_type_reward_upstream_cases():
    # upstream test_goal.py::test_get_type_reward (tolerances as upstream's)
    exact = type_reward(make_product("Name 1", query="Query 1"), make_goal("Name 1", query="Query 1"))
    assert exact == dict(r_type=1.0, query_match=True, category_match=True, title_score=1.0)
    assert type_reward(make_product("Name 1", query="Query 2"), make_goal("Name 1", query="Query 1"))[
        "query_match"] is False
    saireed = "Saireed UL Listed 2 Prong Power Cord for JBL Bar 3.1 Bar 2.1 Channel 4K Ultra HD Soundbar"
    brst = ("BRST AC Power Cord Outlet Socket Cable Plug Lead for Panasonic SC-HT830V DVD/VCR Combo Home "
            "Theater System")
    assert type_reward(make_product(brst), make_goal(saireed + " Home Theater System Subwoofer"))[
        "title_score"] == pytest.approx(0.31, abs=1e-2)
    assert type_reward(make_product(brst), make_goal(saireed))["title_score"] == pytest.approx(0.17, abs=1e-2)
    assert type_reward(make_product("Minkissy 2pcs Stainless Steel Eyebrow Tweezers Blackhead Acne Remover "
                                    "Portable Makeup Tweezers (Silver)"),
                       make_goal("Rusticware 921ORB Kitchen and Bath Cabinet Knob"))["title_score"] < 0.05


@pytest.mark.xfail(strict=True, raises=AssertionError, reason=(
    "spaCy model variant, not a code bug: upstream's test_goal.py expects 0.85 +- 0.01 (a value from the "
    "spaCy model upstream used then, en_core_web_lg until 2024); the pinned reference en_core_web_sm 3.8.0 "
    "tags 6 goal nouns (unisex adult d.o.n issue basketball shoe) of which the purchased title shares 5: "
    "5/6 = 0.833, outside the tolerance"))
def test_type_reward_upstream_similar_names_case():
    info = type_reward(make_product("adidas Unisex-Adult D.o.n. Issue 2 Indoor Court Shoe"),
                       make_goal("adidas Unisex-Adult D.o.n. Issue 2 Basketball Shoe"))
    assert info["title_score"] == pytest.approx(0.85, abs=1e-2)


# --------------------------------------------------------------------------------------------------
# Attribute reward (UPSTREAM.md 2.2) and price

TEA = ["tea tree", "essential oils", "natural ingredients"]


def test_attribute_matches_upstream_cases():
    # upstream test_goal.py::test_get_attribute_reward
    assert attribute_matches(make_product(attributes=["tea tree", "essential oil", "natural ingredients"]), TEA) == 3
    assert attribute_matches(make_product(attributes=["essential oil", "natural ingredients"]), TEA) == 2
    in_text = make_product(bullet_points=["This shampoo has essential oils and smells like lemons"],
                           description="Best shampoo on the market, made with natural ingredients")
    assert attribute_matches(in_text, TEA) == 2
    no_match = make_product("English tea for breakfast", attributes=["tea bag", "earl gray", "lipton"],
                            bullet_points=["Soothing aroma", "Calming, great feeling"],
                            description="Best tea made by Lipton, great to pair with breakfast")
    assert attribute_matches(no_match, TEA) == 0


def test_attribute_fuzzy_threshold_is_strict():
    assert fuzz.token_set_ratio("abcdefghijklmno", "abcdefghijk") == 85
    assert attribute_matches(make_product(attributes=["abcdefghijklmno"]), ["abcdefghijk"]) == 0
    assert fuzz.token_set_ratio("abcd", "abc") == 86
    assert attribute_matches(make_product(attributes=["abcd"]), ["abc"]) == 1


def test_attribute_substring_rule():
    # the product side is lower-cased, the goal attribute is not
    assert attribute_matches(make_product("Tea Tree Shampoo"), ["tea tree"]) == 1
    assert attribute_matches(make_product("Tea Tree Shampoo"), ["Tea Tree"]) == 0
    assert attribute_matches(make_product(description="With NATURAL INGREDIENTS."), ["natural ingredients"]) == 1
    # bullet points are joined with spaces, so a match may span two bullets
    assert attribute_matches(make_product(bullet_points=["made with essential", "oils"]), ["essential oils"]) == 1
    # plain substring: no word boundaries
    assert attribute_matches(make_product("Teatree oils"), ["tree oil"]) == 1
    # a fuzzy attribute match and a text match count once
    assert attribute_matches(make_product("tea tree", attributes=["tea tree"]), ["tea tree"]) == 1


@pytest.mark.parametrize("price, passes", [(39.99, True), (40.0, True), (40.000001, False), (1e9, False)])
def test_price_check_is_less_or_equal(price, passes):
    goal = make_goal("sofa", attributes=["x"], price_upper=40.0)
    reward, info = get_reward(make_product("sofa", attributes=["x"]), goal, price, {})
    assert info["r_price"] is passes
    assert reward == (2 if passes else 1) / 2


# --------------------------------------------------------------------------------------------------
# get_reward: upstream test_goal.py::test_get_reward (0.5714 -> 0.2857 with r_type 0.5)

def test_get_reward_upstream_sequence():
    shoe = "Mens D.O.N. Issue 2 Gca Basketball Sneakers Shoes Casual - Off White"
    goal = make_goal(shoe, query="Query 1", attributes=TEA, goal_options={"color": "grey", "size": "XL"},
                     price_upper=40.0)
    bought = {"color": "grey", "size": "XL"}
    product = make_product(shoe, query="Query 1", attributes=["tea tree", "essential oil", "natural ingredients"])
    assert get_reward(product, goal, 35, bought)[0] == 1.0

    # Attributes only through the text: upstream passes BulletPoints as a bare string, which ' '.join spreads
    # into letters, so only 'natural ingredients' (description) matches; our products always hold a list of
    # bullets, so the same outcome needs bullets without the attribute.
    product = make_product(shoe, query="Query 1", bullet_points=["This shampoo smells like lemons"],
                           description="Best shampoo on the market, made with natural ingredients")
    reward, info = get_reward(product, goal, 35, bought)
    assert reward == pytest.approx(4 / 6, abs=1e-4)
    assert info["r_att"] == 1 / 3

    # A third goal option the purchase does not have: 1 attribute + 2 options + price of 7 parts
    goal.goal_options = {"color": "grey", "size": "XL", "amount": "pack of 12"}
    reward, info = get_reward(product, goal, 35, bought)
    assert reward == pytest.approx(0.5714, abs=1e-4) and reward == pytest.approx(4 / 7, abs=1e-12)
    assert info == dict(r_type=1.0, r_att=1 / 3, w_att=3 / 7, query_match=True, category_match=True,
                        title_score=1.0, r_option=2 / 3, w_option=3 / 7, r_price=True, w_price=1 / 7)

    # A different product type: query, category and title (score 2/12 <= 0.2) all miss -> r_type 0.5
    goal.name = "Saireed UL Listed 2 Prong Power Cord for JBL Bar 3.1 Bar 2.1 Channel 4K Ultra HD Soundbar"
    product.title = ("BRST AC Power Cord Outlet Socket Cable Plug Lead for Panasonic SC-HT830V DVD/VCR Combo "
                     "Home Theater System")
    product.query, product.product_category = "Query 2", "a › d › e"
    reward, info = get_reward(product, goal, 35, bought)
    assert reward == pytest.approx(0.2857, abs=1e-4) and reward == pytest.approx(4 / 7 * 0.5, abs=1e-12)
    assert info["r_type"] == 0.5
    assert (info["query_match"], info["category_match"]) == (False, False)
    assert info["title_score"] == pytest.approx(0.17, abs=1e-2)
    assert (info["r_att"], info["r_option"], info["r_price"]) == (1 / 3, 2 / 3, True)


def test_get_reward_info_keys_without_goal_options():
    goal = make_goal("sofa", attributes=["x", "y"], goal_options=[], price_upper=50.0, kind="human")
    reward, info = get_reward(make_product("sofa", attributes=["x"]), goal, 10.0, {"color": "red"})
    assert reward == 2 / 3
    assert set(info) == {"r_type", "r_att", "w_att", "query_match", "category_match", "title_score",
                         "r_price", "w_price"}
    assert (info["w_att"], info["w_price"]) == (2 / 3, 1 / 3)


def test_human_goal_options_are_plain_values():
    goal = make_goal("sofa", attributes=["x"], goal_options=["pink", "8"], kind="human")
    reward, info = get_reward(make_product("sofa", attributes=["x"]), goal, 10.0, {"size": "8", "color": "z2-pink"})
    assert reward == 1.0 and info["r_option"] == 1.0


# --------------------------------------------------------------------------------------------------
# The nine MTurk logs (2022-04-27): what the original web app computed

LOG_DIR = SHARED / "human_trajectory_logs"
LOG_NAMES = [f"20220427_1_{i}" for i in (6, 7, 12, 13, 15, 17, 18, 21, 23)]


def read_done(name: str) -> dict:
    lines = [json.loads(line) for line in (LOG_DIR / f"{name}.jsonl").read_text().splitlines() if line.strip()]
    done = [d for d in lines if d["page"] == "done"]
    assert len(done) == 1
    d = done[0]
    # Be lenient about the encoding: the reward may be a string and reward_info a Python repr.
    info = d["reward_info"]
    info = ast.literal_eval(info) if isinstance(info, str) else info
    return dict(goal=d["goal"], content=d["content"], reward=float(d["reward"]), info=info)


def goal_from_log(g: dict, **overrides) -> Goal:
    fields = dict(asin=g["asin"], instruction_text=g["instruction_text"], attributes=g["attributes"],
                  goal_options=g["goal_options"], price_upper=g["price_upper"], weight=g["weight"],
                  name=g["name"], category=g["category"], query=g["query"],
                  product_category=g["product_category"], kind="human")
    fields.update(overrides)
    return Goal(**fields)


@needs_data
def test_all_nine_logs_present():
    assert sorted(p.stem for p in LOG_DIR.glob("*.jsonl")) == sorted(LOG_NAMES)


@needs_data
@pytest.mark.parametrize("name", LOG_NAMES)
def test_log_price_options_and_total_reward(name):
    log = read_done(name)
    goal, content, info = goal_from_log(log["goal"]), log["content"], log["info"]
    assert isinstance(goal.goal_options, list)

    r_price = content["price"] <= goal.price_upper
    assert r_price is info["r_price"]

    n_opt = option_matches(list(content["options"].values()), goal.goal_options)
    if goal.goal_options:
        assert n_opt / len(goal.goal_options) == info["r_option"]
    else:
        assert "r_option" not in info

    n_att = round(info["r_att"] * len(goal.attributes))
    assert n_att / len(goal.attributes) == info["r_att"]
    denominator = len(goal.attributes) + len(goal.goal_options) + 1
    assert (n_att + n_opt + r_price) / denominator * info["r_type"] == log["reward"]


@needs_data
@pytest.mark.parametrize("name", LOG_NAMES)
def test_log_r_type_from_its_three_parts(name):
    """type_reward gives the logged r_type for a product whose query/category/title parts come out as logged.

    The purchased products are not in the 1,000-product catalogue, so their titles are stand-ins: noun lists
    chosen so that title_score is exactly the logged fraction. Query and category are the log goal's own.
    """
    log = read_done(name)
    info = log["info"]
    frac = Fraction(info["title_score"]).limit_denominator(100)
    assert frac.numerator / frac.denominator == info["title_score"]
    purchased_title, goal_title = noun_titles(frac.numerator, frac.denominator)
    goal = goal_from_log(log["goal"], name=goal_title)
    first_part = goal.product_category.split("›")[0].strip()
    product = make_product(purchased_title,
                           query=goal.query if info["query_match"] else goal.query + " (other)",
                           # one shared part is not a match: two are needed
                           product_category=goal.product_category if info["category_match"]
                           else f"{first_part} › somewhere else")
    assert type_reward(product, goal) == dict(r_type=info["r_type"], query_match=info["query_match"],
                                              category_match=info["category_match"],
                                              title_score=info["title_score"])


def own_product_from_log_goal(g: dict) -> Product:
    return make_product(g["name"], query=g["query"], product_category=g["product_category"], asin=g["asin"])


@needs_data
def test_log_1_7_bought_the_goals_own_product():
    log = read_done("20220427_1_7")
    assert log["content"]["asin"] == log["goal"]["asin"]
    product, goal = own_product_from_log_goal(log["goal"]), goal_from_log(log["goal"])
    reward, info = get_reward(product, goal, log["content"]["price"], log["content"]["options"])
    assert reward == log["reward"] == 1.0
    for key in ("r_type", "r_att", "query_match", "category_match", "r_price"):
        assert info[key] == log["info"][key], key
    # en_core_web_sm 3.8.0 finds 25 nouns (23 distinct: 'gb' and 'intel' twice) in this title
    nouns = title_nouns(goal.name)
    assert (len(nouns), len(set(nouns))) == (25, 23)
    assert info["title_score"] == 23 / 25


@needs_data
@pytest.mark.xfail(strict=True, raises=AssertionError, reason=(
    "spaCy model variant, not a code bug: the 2022 log's title_score 0.9130434782608695 = 21/23 came from "
    "en_core_web_lg (23 nouns, 21 distinct); the pinned reference en_core_web_sm 3.8.0 finds 25 nouns, 23 "
    "distinct, so the own-product title_score is 23/25 = 0.92 (r_type is 1.0 either way)"))
def test_log_1_7_title_score_as_logged():
    log = read_done("20220427_1_7")
    nouns = title_nouns(log["goal"]["name"])
    assert len(set(nouns)) / len(nouns) == log["info"]["title_score"] == 0.9130434782608695


# --------------------------------------------------------------------------------------------------
# Real catalogue: buying the goal's own product with the goal's options

@pytest.fixture(scope="module")
def own_purchases():
    if not SHARED.is_dir():
        pytest.skip("../shared/webshop not found: the real WebShop data is read from there, never committed")
    from webshop.catalogue import load_dir
    from webshop.goals import build_goals

    catalogue = load_dir(SHARED)
    goal_set = build_goals(catalogue)
    out = []
    for goal in goal_set.goals[:300]:
        product = catalogue.product(goal.asin)
        options = dict(goal.goal_options)
        out.append((goal, product, options, *get_reward(product, goal, goal_set.product_prices[goal.asin], options)))
    return out


def test_own_product_mostly_scores_1(own_purchases):
    share = sum(reward == 1.0 for _, _, _, reward, _ in own_purchases) / len(own_purchases)
    assert share >= 0.8


def test_own_product_loses_only_through_option_quirks(own_purchases):
    """An exact own-product purchase falls short only on options, through the tuple quirks of UPSTREAM 8.1:
    a purchased value like 'black137' normalises to 'black' while the goal's ('color', 'black137') tuple does
    not; and a value with a non-printable character (e.g. a non-breaking space) is escaped by the tuple's repr."""
    short = [(g, o, info) for g, _, o, reward, info in own_purchases if reward < 1.0]
    colour_only = 0
    for goal, options, info in short:
        assert (info["r_type"], info["r_att"], info["r_price"]) == (1.0, 1.0, True)
        assert info["r_option"] < 1
        purchased = list(options.values())
        assert any(normalize_color(v) != v for v in purchased)
        # without normalisation every goal (name, value) pair would have matched...
        if all(any(fuzz.token_set_ratio(p, g) > 85 for p in purchased) for g in goal.goal_options.items()):
            colour_only += 1
        else:  # ...unless a value has a character that repr() escapes
            assert any(not v.isprintable() for v in purchased), options
    assert colour_only > 0, "the first 300 goals include colour-normalisation misses (UPSTREAM 8.1)"
