"""Shared fixtures: the real WebShop data (read from ../shared/webshop, never committed) and a generated shop."""
from __future__ import annotations

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "webshop"
HTML_PAGES = SHARED / "html_pages"


@pytest.fixture(scope="session")
def real_shop():
    """The 1,000-product upstream catalogue with its 6,910 synthetic goals in upstream order."""
    if not SHARED.is_dir():
        pytest.skip("../shared/webshop not found: the real WebShop data is read from there, never committed")
    from webshop.catalogue import load_dir
    from webshop.env import Shop

    return Shop(load_dir(SHARED))


@pytest.fixture(scope="session")
def generated_shop():
    """A seeded 300-product catalogue from our generator: always available, no download."""
    from webshop.env import Shop
    from webshop.generate import generate_catalogue

    return Shop(generate_catalogue(num_products=300, seed=0))
