"""The embedded catalogue generator: deterministic, and shaped like upstream's products after `load_products`."""
import re

import pytest

from webshop import generate
from webshop.catalogue import Catalogue, Product
from webshop.generate import generate_catalogue

CATEGORIES = {"beauty", "electronics", "fashion", "garden", "grocery"}
ASIN = re.compile(r"B0[A-Z0-9]{8}")


@pytest.fixture(scope="module")
def catalogue() -> Catalogue:
    return generate_catalogue(500, seed=0)


def _fields(p: Product) -> tuple:
    return (p.asin, p.title, p.description, p.bullet_points, p.pricing, p.price_text, p.options, p.attributes,
            p.category, p.query, p.product_category, p.instruction_text, p.instruction_attributes,
            p.human_instructions)


def test_same_seed_gives_identical_products(catalogue):
    again = generate_catalogue(500, seed=0)
    assert again.name == catalogue.name == "generated-500-seed0"
    assert [_fields(p) for p in again.products] == [_fields(p) for p in catalogue.products]


def test_different_seeds_differ(catalogue):
    other = generate_catalogue(500, seed=1)
    assert other.name == "generated-500-seed1"
    assert [p.asin for p in other.products] != [p.asin for p in catalogue.products]
    assert [p.title for p in other.products] != [p.title for p in catalogue.products]


def test_size_and_edge_sizes():
    assert len(generate_catalogue(0)) == 0
    assert len(generate_catalogue(1, seed=7)) == 1
    assert len(generate_catalogue()) == 300
    with pytest.raises(ValueError):
        generate_catalogue(-1)


def test_categories_are_the_five_upstream_ones_in_equal_shares(catalogue):
    counts = {c: sum(p.category == c for p in catalogue.products) for c in CATEGORIES}
    assert set(p.category for p in catalogue.products) == CATEGORIES
    assert all(count == 100 for count in counts.values()), counts
    queries = {p.query for p in catalogue.products}
    assert len(queries) >= 20
    for p in catalogue.products:
        assert p.query == p.query.lower().strip() and p.query


def test_asins_are_unique_and_upstream_shaped(catalogue):
    asins = [p.asin for p in catalogue.products]
    assert len(set(asins)) == len(asins)
    assert all(ASIN.fullmatch(a) for a in asins)
    assert catalogue.product(asins[17]) is catalogue.products[17]


def test_price_text_matches_pricing_exactly(catalogue):
    ranges = 0
    for p in catalogue.products:
        assert 1 <= len(p.pricing) <= 2
        assert all(isinstance(x, float) and x > 0 and round(x, 2) == x for x in p.pricing)
        if len(p.pricing) == 1:
            assert p.price_text == f"${p.pricing[0]}"
        else:
            ranges += 1
            assert p.pricing[0] < p.pricing[1]
            assert p.price_text == f"${p.pricing[0]} to ${p.pricing[1]}"
    assert 0.03 * len(catalogue) < ranges < 0.2 * len(catalogue)


def test_titles_descriptions_bullets_breadcrumbs(catalogue):
    empty_descriptions = 0
    for p in catalogue.products:
        assert 6 <= len(p.title.split()) <= 20, p.title
        assert 2 <= len(p.bullet_points) <= 5 and all(isinstance(b, str) and b for b in p.bullet_points)
        if p.description:
            assert 1 <= p.description.count(".") <= 3
        else:
            empty_descriptions += 1
        crumbs = p.product_category.split(" \u203a ")
        assert len(crumbs) >= 3 and all(crumbs), p.product_category
    assert 0 < empty_descriptions < len(catalogue) / 2


def test_options_are_lower_case_unique_and_about_half(catalogue):
    with_options = 0
    for p in catalogue.products:
        if not p.options:
            assert p.options == {}
            continue
        with_options += 1
        assert 1 <= len(p.options) <= 3
        values = [v for vs in p.options.values() for v in vs]
        assert len(values) == len(set(values)), p.options
        for name, vs in p.options.items():
            assert name == name.lower() and 2 <= len(vs) <= 6
            assert all(v == v.lower().strip() and v for v in vs)
    assert 0.35 * len(catalogue) < with_options < 0.55 * len(catalogue)


def test_attributes_are_lower_case_phrases_often_shown_in_title_or_bullets(catalogue):
    shown = 0
    for p in catalogue.products:
        assert 2 <= len(p.attributes) <= 5 and len(set(p.attributes)) == len(p.attributes)
        assert all(a == a.lower() and a.strip() == a for a in p.attributes)
        text = (p.title + " " + " ".join(p.bullet_points)).lower()
        shown += any(a in text for a in p.attributes)
    assert shown > 0.6 * len(catalogue)


def test_synthetic_instructions_use_the_products_attributes_and_query(catalogue):
    with_instruction = [p for p in catalogue.products if p.instruction_text is not None]
    assert 0.35 * len(catalogue) < len(with_instruction) < 0.55 * len(catalogue)
    for p in catalogue.products:
        if p.instruction_text is None:
            assert p.instruction_attributes is None
            continue
        assert 1 <= len(p.instruction_attributes) <= 3
        assert set(p.instruction_attributes) <= set(p.attributes)
        assert p.instruction_text.startswith("Find me ") and p.query in p.instruction_text
        assert all(a in p.instruction_text for a in p.instruction_attributes)
    assert any(" with " in p.instruction_text for p in with_instruction)


def test_human_instructions_are_rare_and_consistent(catalogue):
    humans = [(p, h) for p in catalogue.products for h in p.human_instructions]
    assert 0 < len(humans) < 0.1 * len(catalogue)
    values_seen = False
    for p, h in humans:
        assert len(p.human_instructions) == 1
        assert h.instruction == h.instruction.lower() and h.instruction_attributes
        assert set(h.instruction_attributes) <= set(p.attributes)
        assert set(h.instruction_options) <= {v for vs in p.options.values() for v in vs}
        assert all(a in h.instruction for a in h.instruction_attributes + h.instruction_options)
        values_seen |= bool(h.instruction_options)
    assert values_seen


def test_search_text_covers_title_description_bullet_and_options(catalogue):
    p = next(p for p in catalogue.products if p.options and p.description)
    text = p.search_text
    assert text == text.lower()
    assert p.title.lower() in text and p.description.lower() in text and p.bullet_points[0].lower() in text
    name, values = next(iter(p.options.items()))
    assert f"{name}: {', '.join(values)}" in text


def test_vocabulary_is_consistent():
    """Each kind can always fill 5 attributes, 5 bullets + 3 description sentences, and option values that
    cannot collide; the with/for attribute roles name only phrases some kind uses."""
    vocabulary = set()
    for category in generate._CATEGORIES:
        assert len(category.claims) >= 8
        assert all(len(d.split()) == 1 for d in category.descriptors) and len(category.descriptors) >= 5
        for kind in category.kinds:
            pool = kind.attributes + category.attributes
            assert len(pool) >= 5 and len(set(pool)) == len(pool)
            vocabulary.update(pool)
            names = [generate._OPTION_POOLS[key][0] for key in kind.options]
            assert len(set(names)) == len(names)
            values = [v for key in kind.options for v in generate._OPTION_POOLS[key][1]]
            assert len(set(values)) == len(values), kind.query
    assert generate._WITH_ATTRIBUTES <= vocabulary and generate._FOR_ATTRIBUTES <= vocabulary
    assert not generate._WITH_ATTRIBUTES & generate._FOR_ATTRIBUTES


def test_thousand_products_generate():
    """Speed check by running it (well under a second); no timing assertion to stay robust on slow CI."""
    big = generate_catalogue(1000, seed=3)
    assert len(big) == 1000 and len(big.by_asin) == 1000
