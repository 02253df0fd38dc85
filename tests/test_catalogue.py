"""The catalogue loaders and goal construction against upstream WebShop (`load_products`, `get_synthetic_goals`,
`get_human_goals`; ../shared/webshop/UPSTREAM.md sections 1.7, 2.4-2.6 and 3)."""
from __future__ import annotations

import dataclasses
import json
import shutil
from collections import Counter
from pathlib import Path

import pytest

from webshop.catalogue import Catalogue, DataError, Product, load_dir, load_processed, parse_price
from webshop.goals import NO_PRICE_CAP, PRICE_RANGE, build_goals

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "webshop"
NO_DATA = "../shared/webshop not found: the real WebShop data is read from there, never committed"
PROCESSED = SHARED / "items_shuffle_1000.processed_from_lucene_index.jsonl"
ATTRS = SHARED / "items_ins_v2_1000.json"
DERIVED_GOALS = SHARED / "small_synthetic_goals_seed233_order.derived.jsonl"


@pytest.fixture(scope="module")
def records() -> list[dict]:
    """The 1,000 processed JSONL records {"id", "contents", "product"} in file order."""
    if not SHARED.is_dir():
        pytest.skip(NO_DATA)
    return [json.loads(line) for line in PROCESSED.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def catalogue() -> Catalogue:
    if not SHARED.is_dir():
        pytest.skip(NO_DATA)
    return load_dir(SHARED)


@pytest.fixture(scope="module")
def goal_set(catalogue):
    return build_goals(catalogue)


# --------------------------------------------------------------------------------------------------
# The processed JSONL (upstream's search-index records)

def test_loads_the_1000_products(catalogue):
    assert len(catalogue) == 1000
    assert len(catalogue.by_asin) == 1000


def test_category_counts(catalogue):
    assert Counter(p.category for p in catalogue.products) == dict(
        beauty=238, electronics=229, garden=216, fashion=200, grocery=117)


def test_products_with_options(catalogue):
    assert sum(bool(p.options) for p in catalogue.products) == 423


def test_products_follow_file_order(catalogue, records):
    assert [p.asin for p in catalogue.products] == [r["id"] for r in records]


def test_search_text_equals_indexed_contents(catalogue, records):
    mismatches = [r["id"] for p, r in zip(catalogue.products, records) if p.search_text != r["contents"]]
    assert mismatches == []


# --------------------------------------------------------------------------------------------------
# Raw loader round trip: upstream-format raw products rebuilt from the records load to the same Products

def raw_pricing(values: list[float]) -> str:
    return " - ".join(f"${v}" for v in values)


def raw_product(record: dict) -> dict:
    p = record["product"]
    raw = {key: p[key] for key in ("name", "full_description", "small_description", "customization_options",
                                   "category", "query", "product_category", "asin", "images")}
    raw["pricing"] = raw_pricing(p["pricing"])
    raw["brand"] = "dropped by clean_product_keys"
    return raw


@pytest.fixture(scope="module")
def raw_dir(records, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("raw")
    (d / "items_shuffle_1000.json").write_text(json.dumps([raw_product(r) for r in records]), encoding="utf-8")
    shutil.copy(ATTRS, d / "items_ins_v2_1000.json")
    human = {r["id"]: r["product"]["instructions"] for r in records if "instructions" in r["product"]}
    (d / "items_human_ins.json").write_text(json.dumps(human), encoding="utf-8")
    return d


def test_raw_pricing_string_rebuilt():
    assert raw_pricing([877.8]) == "$877.8"
    assert raw_pricing([24.49, 39.99]) == "$24.49 - $39.99"


def test_raw_loader_round_trip(raw_dir, catalogue, records):
    raw = load_dir(raw_dir)
    assert raw.name == "items_shuffle_1000"
    assert len(raw) == len(catalogue) == 1000
    for r, a, b in zip(records, raw.products, catalogue.products):
        for f in dataclasses.fields(Product):
            assert getattr(a, f.name) == getattr(b, f.name), (r["id"], f.name)
    assert sum(bool(p.human_instructions) for p in raw.products) == 13


def test_raw_loader_matches_upstream_processed_fields(raw_dir, records):
    """Field by field against what upstream `load_products` itself wrote into the records."""
    raw = load_dir(raw_dir)
    for r, p in zip(records, raw.products):
        up = r["product"]
        assert p.title == up["Title"] == up["name"]
        assert p.description == up["Description"]
        assert p.bullet_points == up["BulletPoints"]
        assert p.options == up["options"]
        assert p.price_text == up["Price"]
        assert p.pricing == up["pricing"]
        assert p.attributes == up["Attributes"]
        assert p.query == up["query"]


def test_raw_loader_option_and_bullet_rules(raw_dir, records):
    raw = load_dir(raw_dir)
    string_bullets = [(r, p) for r, p in zip(records, raw.products)
                      if isinstance(r["product"]["small_description"], str)]
    assert string_bullets, "the catalogue has products whose small_description is a string"
    for r, p in string_bullets:
        assert p.bullet_points == [r["product"]["small_description"]]
    checked = 0
    for r, p in zip(records, raw.products):
        for name, contents in (r["product"]["customization_options"] or {}).items():
            if contents is None:  # upstream skips an option whose content list is None
                assert name.lower() not in p.options
                continue
            assert p.options[name.lower()] == [c["value"].strip().replace("/", " | ").lower() for c in contents]
            checked += 1
    assert checked > 400


def write_raw(d: Path, products: list, attrs: dict | None = None) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "items_shuffle_1000.json").write_text(json.dumps(products), encoding="utf-8")
    (d / "items_ins_v2_1000.json").write_text(json.dumps(attrs or {}), encoding="utf-8")
    return d


def tiny(asin: str, **overrides) -> dict:
    p = dict(asin=asin, name=f"Product {asin}", full_description="A thing.", small_description=["One bullet"],
             customization_options="", category="garden", query="things", product_category="A › B",
             images=["https://example.invalid/1.jpg"], pricing="$10.00")
    p.update(overrides)
    return p


def test_raw_loader_skip_rules(tmp_path):
    products = [tiny("B000000001"), tiny("nan"), tiny("B0000000001"), tiny("B000000001", name="Second copy"),
                tiny("B000000002")]
    catalogue = load_dir(write_raw(tmp_path, products))
    assert [p.asin for p in catalogue.products] == ["B000000001", "B000000002"]
    assert catalogue.product("B000000001").title == "Product B000000001"  # the first copy wins


def test_raw_loader_truncates_before_skipping(tmp_path):
    products = [tiny("B000000001"), tiny("nan"), tiny("B000000002")]
    assert [p.asin for p in load_dir(write_raw(tmp_path, products), num_products=2).products] == ["B000000001"]


def test_raw_loader_per_product_rules(tmp_path):
    attrs = {"B000000001": {"attributes": ["solid wood"], "instruction": "Find me a table",
                            "instruction_attributes": ["solid wood"]},
             "B000000003": {}}
    products = [
        tiny("B000000001", query="  Console Tables ", small_description="Just one string",
             customization_options={"Color": [{"value": " Black/White "}, {"value": "RED"}], "Size": None}),
        tiny("B000000002", pricing=""),
        tiny("B000000003", pricing="$24.49 - $39.99"),
    ]
    del products[1]["pricing"]
    a, b, c = load_dir(write_raw(tmp_path, products, attrs)).products
    assert a.query == "console tables"
    assert a.bullet_points == ["Just one string"]
    assert a.options == {"color": ["black | white", "red"]}
    assert (a.attributes, a.instruction_text, a.instruction_attributes) == (
        ["solid wood"], "Find me a table", ["solid wood"])
    assert (b.pricing, b.price_text) == ([100.0], "$100.0")              # no pricing key at all
    assert b.attributes == ["DUMMY_ATTR"] and b.instruction_text is None  # not in the attribute file
    assert c.attributes == ["DUMMY_ATTR"]                                 # in it, without 'attributes'
    assert (c.pricing, c.price_text) == ([24.49, 39.99], "$24.49 to $39.99")


@pytest.mark.parametrize("pricing, values, text", [
    ("$1,299.00", [1299.0], "$1299.0"),
    ("$24.49 - $39.99", [24.49, 39.99], "$24.49 to $39.99"),
    ("", [100.0], "$100.0"),
    ("$1.00 - $2.50 - $3.00", [1.0, 2.5], "$1.0 to $2.5"),  # three values: the first two are kept
    ("$877.8", [877.8], "$877.8"),
    ("$12", [12.0], "$12.0"),                               # Python float repr
])
def test_price_parsing(pricing, values, text):
    assert parse_price(pricing, "items.json: product 0") == (values, text)


# --------------------------------------------------------------------------------------------------
# Bad input: DataError, one line, naming the file and the field

def assert_one_line_error(excinfo, *parts: str):
    message = str(excinfo.value)
    assert "\n" not in message
    for part in parts:
        assert part in message, (part, message)


def test_missing_data_folder(tmp_path):
    with pytest.raises(DataError) as e:
        load_dir(tmp_path / "nowhere")
    assert_one_line_error(e, str(tmp_path / "nowhere"))


def test_folder_without_product_file(tmp_path):
    with pytest.raises(DataError) as e:
        load_dir(tmp_path)
    assert_one_line_error(e, str(tmp_path), "items_shuffle_1000.json")


def test_missing_attribute_file(tmp_path):
    write_raw(tmp_path, [tiny("B000000001")])
    (tmp_path / "items_ins_v2_1000.json").unlink()
    with pytest.raises(DataError) as e:
        load_dir(tmp_path)
    assert_one_line_error(e, str(tmp_path / "items_ins_v2_1000.json"), "not found")


def test_missing_processed_file(tmp_path):
    with pytest.raises(DataError) as e:
        load_processed(tmp_path / "items.jsonl")
    assert_one_line_error(e, str(tmp_path / "items.jsonl"))


def test_corrupt_json(tmp_path):
    write_raw(tmp_path, [])
    path = tmp_path / "items_shuffle_1000.json"
    path.write_text('[{"asin": "B000000001", "name": ', encoding="utf-8")
    with pytest.raises(DataError) as e:
        load_dir(tmp_path)
    assert_one_line_error(e, str(path), "JSON")


def test_corrupt_jsonl_line(tmp_path):
    path = tmp_path / "items.jsonl"
    path.write_text('{"id": "x", "product": {}}\n{"id": \n', encoding="utf-8")
    with pytest.raises(DataError) as e:
        load_processed(path)
    assert_one_line_error(e, str(path), "line 1")


def test_processed_record_missing_field(tmp_path):
    path = tmp_path / "items.jsonl"
    path.write_text(json.dumps({"id": "B000000001", "contents": "", "product": {"asin": "B000000001"}}) + "\n",
                    encoding="utf-8")
    with pytest.raises(DataError) as e:
        load_processed(path)
    assert_one_line_error(e, str(path), "line 1", "'Title'")


def test_product_missing_name(tmp_path):
    bad = tiny("B000000002")
    del bad["name"]
    write_raw(tmp_path, [tiny("B000000001"), bad])
    with pytest.raises(DataError) as e:
        load_dir(tmp_path)
    assert_one_line_error(e, str(tmp_path / "items_shuffle_1000.json"), "'name'", "B000000002")


@pytest.mark.parametrize("pricing", ["$abc", "$1.2.3", "12.99"])
def test_bad_pricing_string(tmp_path, pricing):
    write_raw(tmp_path, [tiny("B000000001", pricing=pricing)])
    with pytest.raises(DataError) as e:
        load_dir(tmp_path)
    assert_one_line_error(e, str(tmp_path / "items_shuffle_1000.json"), "'pricing'", pricing)


def test_data_error_is_a_value_error():
    assert issubclass(DataError, ValueError)


# --------------------------------------------------------------------------------------------------
# Goals

def test_6910_synthetic_goals_in_upstream_order(goal_set):
    derived = [json.loads(line) for line in DERIVED_GOALS.read_text(encoding="utf-8").splitlines()]
    assert len(goal_set) == len(derived) == 6910
    for i, (g, d) in enumerate(zip(goal_set.goals, derived)):
        assert d["goal_idx"] == i
        assert (g.asin, g.instruction_without_price, g.attributes, list(g.goal_options.items()), g.query,
                g.category, g.product_category, g.name) == (
            d["asin"], d["instruction_text_without_price"], d["attributes"], list(d["goal_options"].items()),
            d["query"], d["category"], d["product_category"], d["name"]), i
        assert g.weight == pytest.approx(d["weight"], abs=1e-12), i
        assert g.kind == "synthetic"


def test_goal_6_is_agentgyms_webshop_6(goal_set):
    goal = goal_set.goals[6]
    expected = ("Find me men's shorts with elastic waist, classic fit, short sleeve for gym workout with color: "
                "navy, and size: x-large")
    assert goal.instruction_without_price == expected
    assert goal.instruction_text == f"{expected}, and price lower than {goal.price_upper:.2f} dollars"


def test_same_seed_same_prices_other_seed_different(catalogue):
    a, b, c = build_goals(catalogue, seed=0), build_goals(catalogue, seed=0), build_goals(catalogue, seed=1)
    assert a.product_prices == b.product_prices
    assert [g.price_upper for g in a.goals] == [g.price_upper for g in b.goals]
    assert [g.instruction_text for g in a.goals] == [g.instruction_text for g in b.goals]
    assert a.product_prices != c.product_prices
    assert [g.price_upper for g in a.goals] != [g.price_upper for g in c.goals]
    # the seed changes prices only, never the goal order
    assert [(g.asin, g.goal_options) for g in a.goals] == [(g.asin, g.goal_options) for g in c.goals]


def test_prices_fixed_or_drawn_within_the_range(catalogue, goal_set):
    for p in catalogue.products:
        price = goal_set.product_prices[p.asin]
        if len(p.pricing) == 1:
            assert price == p.pricing[0]
        else:
            assert min(p.pricing) <= price <= max(p.pricing)  # random.uniform(a, b) also when a > b


def check_price_cap(goal, price):
    candidates = [p for p in PRICE_RANGE if p > price][:4]
    if len(candidates) >= 2:
        # the larger of two distinct candidates: never the first one
        assert goal.price_upper in candidates[1:]
        assert goal.instruction_text.endswith(f", and price lower than {goal.price_upper:.2f} dollars")
    else:
        assert goal.price_upper == NO_PRICE_CAP
        assert "price lower than" not in goal.instruction_text


def test_price_cap_rule_on_real_goals(goal_set):
    capped = {g.asin: g.price_upper for g in goal_set.goals}
    for g in goal_set.goals:
        check_price_cap(g, goal_set.product_prices[g.asin])
        assert g.price_upper == capped[g.asin]  # one cap per product, shared by its option combinations
    assert any(g.price_upper == NO_PRICE_CAP for g in goal_set.goals)
    assert any(g.price_upper != NO_PRICE_CAP for g in goal_set.goals)


def priced_product(asin: str, pricing: list[float]) -> Product:
    return Product(asin=asin, title="Oak table", description="", bullet_points=[], pricing=pricing,
                   price_text="", options={}, attributes=["solid wood"], category="garden", query="tables",
                   product_category="A › B", instruction_text="Find me a table",
                   instruction_attributes=["solid wood"])


@pytest.mark.parametrize("price, caps", [
    (10.0, {30.0, 40.0, 50.0}),   # strictly above the price: 20, 30, 40, 50
    (9.99, {20.0, 30.0, 40.0}),
    (975.0, {990.0}),             # candidates 980, 990
    (980.0, {NO_PRICE_CAP}),      # one candidate: no cap, no clause
    (4299.99, {NO_PRICE_CAP}),
])
def test_price_cap_boundaries(price, caps):
    seen = set()
    for seed in range(40):
        goal = build_goals(Catalogue.from_products("t", [priced_product("B000000001", [price])]), seed=seed).goals[0]
        check_price_cap(goal, price)
        seen.add(goal.price_upper)
    assert seen == caps


def test_unpriced_product_costs_100():
    goal_set = build_goals(Catalogue.from_products("t", [priced_product("B000000001", [])]))
    assert goal_set.product_prices == {"B000000001": 100.0}
    assert goal_set.goals[0].price_upper in (120.0, 130.0, 140.0)


def test_splits(goal_set):
    assert goal_set.split("test") == range(0, 500)
    assert goal_set.split("eval") == range(500, 1500)
    assert goal_set.split("train") == range(1500, 6910)
    assert goal_set.split("test", test_size=100) == range(0, 100)
    assert goal_set.split("eval", test_size=100, eval_size=200) == range(100, 300)
    assert goal_set.split("train", test_size=100, eval_size=200) == range(300, 6910)
    with pytest.raises(ValueError, match="validation"):
        goal_set.split("validation")


def test_human_goals_on_the_small_set(catalogue):
    human = build_goals(catalogue, kind="human")
    assert len(human) == 13
    for g in human.goals:
        assert g.kind == "human" and g.weight == 1.0
        assert isinstance(g.goal_options, list) and g.attributes
        assert g.name == catalogue.product(g.asin).title
        check_price_cap(g, human.product_prices[g.asin])
    # a set under 3,000 goals splits 20% / 10% / 70%, so it has training goals; explicit sizes clamp
    assert (human.split("test"), human.split("eval"), human.split("train")) == (range(0, 2), range(2, 3),
                                                                               range(3, 13))
    assert human.split("test", test_size=500) == range(0, 13)
    assert len(human.split("train", test_size=500, eval_size=1000)) == 0


def test_bad_goal_kind(catalogue):
    with pytest.raises(ValueError, match="goal kind"):
        build_goals(catalogue, kind="expert")
