"""Page-to-text fidelity: our pages must read exactly like upstream's HTML after upstream's converter.

The four HTML files in ../shared/webshop/html_pages are real Flask-rendered WebShop pages (results, item,
Description, Features). `upstream_observation` / `upstream_available_actions` below are upstream's
`WebAgentTextEnv.convert_html_to_text` and `get_available_actions` (web_agent_site/envs/web_agent_text_env.py).
Each test rebuilds the page's state from the HTML itself (instruction, products, options, texts), renders it with
`webshop.pages` and compares bytes. The last part checks the "Verified outputs" of UPSTREAM.md 1.5/1.6 on
episodes of the real environment.
"""
from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass
from urllib.parse import unquote

import pytest
from bs4 import BeautifulSoup, Comment

from conftest import HTML_PAGES
from webshop.catalogue import Product, parse_price
from webshop.env import Episode
from webshop.pages import BASE_URL, PageState, clickables, item_url, page_nodes, render

SESSION = "abc"  # the session id the fixture pages were rendered with

# ---------------------------------------------------------------------------------------------------------
# Upstream's converter, as in web_agent_text_env.py (tag_visible + convert_html_to_text + get_available_actions)
# ---------------------------------------------------------------------------------------------------------
_INVISIBLE_PARENTS = {"style", "script", "head", "title", "meta", "[document]"}


def _visible_strings(html: str) -> list:
    soup = BeautifulSoup(html, "html.parser")
    return [t for t in soup.find_all(string=True)
            if t.parent.name not in _INVISIBLE_PARENTS and not isinstance(t, Comment)]


def upstream_observation(html: str, mode: str, url: str = "", visited_asins=frozenset()) -> str:
    visible = _visible_strings(html)
    if mode == "text":
        return " [SEP] ".join(t.strip() for t in visible if t != "\n")
    observation = ""
    for t in visible:
        if t == "\n":
            continue
        if t.parent.name == "button":
            processed = f"[button] {t} [button_]"
        elif t.parent.name == "label":
            if f'"{t}"' in url:
                processed = f"  [clicked button] {t} [clicked button_]"
                observation = f"You have clicked {t}.\n" + observation
            else:
                processed = f"  [button] {t} [button_]"
        elif t.parent.get("class") == ["product-link"]:
            # princeton-nlp/WebShop's source closes a visited link with [clicked button_] (UPSTREAM.md 1.6 says
            # [button_]; every copy of the upstream file reads as below; see test_visited_links_text_rich).
            processed = (f"\n[clicked button] {t} [clicked button_]" if f"{t}" in visited_asins
                         else f"\n[button] {t} [button_]")
        else:
            processed = str(t)
        observation += processed + "\n"
    return observation


def upstream_available_actions(html: str) -> dict:
    soup = BeautifulSoup(html, "html.parser")
    text_to_clickable = {b.get_text().lower(): b
                         for b in soup.find_all(class_="btn") + soup.find_all(class_="product-link")}
    for radio in soup.select('input[type="radio"]'):
        text_to_clickable[radio.get("value")] = radio
    return {"has_search_bar": soup.find(id="search_input") is not None, "clickables": list(text_to_clickable)}


# ---------------------------------------------------------------------------------------------------------
# Page states rebuilt from the fixture HTML
# ---------------------------------------------------------------------------------------------------------
FILES = {"results": "mock_parse_results_ws.html", "item_page": "mock_parse_item_page_ws.html",
         "item_page_desc": "mock_parse_item_page_ws_desc.html", "item_page_feat": "mock_parse_item_page_ws_feat.html"}


def _read(name: str) -> str:
    path = HTML_PAGES / FILES[name]
    if not path.is_file():
        pytest.skip("../shared/webshop not found: the real WebShop data is read from there, never committed")
    return path.read_text(encoding="utf-8")


def _product(asin: str, title: str = "", price_text: str = "$100.0", **fields) -> Product:
    pricing, text = parse_price(price_text, asin)
    assert text == price_text, "upstream's price string must round-trip through our price parser"
    return Product(asin=asin, title=title, description=fields.get("description", ""),
                   bullet_points=fields.get("bullet_points", []), pricing=pricing, price_text=price_text,
                   options=fields.get("options", {}), attributes=["DUMMY_ATTR"], category="fashion", query="",
                   product_category="")


def _instruction(soup: BeautifulSoup) -> str:
    head, *rest = soup.find(id="instruction-text").h4.strings  # <h4>Instruction:<br>{instruction}</h4>
    assert head == "Instruction:"
    return "".join(rest)


def _keywords(path: str) -> list[str]:
    """Keywords from an upstream URL path segment: the repr of a list, URL-quoted."""
    quoted = next(part for part in path.split("/") if part.startswith("%5B"))
    return ast.literal_eval(unquote(quoted))


@dataclass
class Fixture:
    """A real page's HTML and the state we rebuilt from it; `url` is the URL upstream would be at."""

    html: str
    state: PageState
    instruction: str
    product: Product | None
    url: str

    def ours(self, mode: str, url: str | None = None, visited=frozenset()) -> str:
        nodes = page_nodes(self.state, self.instruction, self.product)
        return render(nodes, mode, self.url if url is None else url, visited)


def _results_fixture() -> Fixture:
    html = _read("results")
    soup = BeautifulSoup(html, "html.parser")
    page, total = map(int, re.fullmatch(r"Page (\d+) \(Total results: (\d+)\)", soup.h3.get_text()).groups())
    shown = []
    for link in soup.find_all("a", class_="product-link"):
        block = link.find_parent(class_="searched-product")
        shown.append(_product(link.get_text(), block.find(class_="product-title").find(string=True),
                              block.find(class_="product-price").find(string=True)))
    assert (page, total, len(shown)) == (1, 50, 10)
    hidden = [_product(f"HIDDEN{i:04d}") for i in range(total - len(shown))]  # results on pages 2-5
    keywords = _keywords(soup.find("a", class_="product-link")["href"])
    state = PageState(kind="results", keywords=keywords, page=page, results=shown + hidden)
    url = f"{BASE_URL}/search_results/{SESSION}/{'+'.join(keywords)}/{page}"
    return Fixture(html, state, _instruction(soup), None, url)


def _item_product() -> tuple[Product, list[str], str]:
    """The product shown by the item, Description and Features pages (all three are B09P87V3LZ)."""
    item = BeautifulSoup(_read("item_page"), "html.parser")
    options = {}
    for toolbar in item.find_all(class_="radio-toolbar"):
        name = toolbar.find_previous_sibling("h4").get_text()
        radios = toolbar.find_all("input", type="radio")
        assert [r["name"] for r in radios] == [name] * len(radios)
        assert [lab.get_text() for lab in toolbar.find_all("label")] == [r["value"] for r in radios]
        options[name] = [r["value"] for r in radios]
    buy = item.find("button", string="Buy Now").find_parent("form")["action"]  # /done/abc/{asin}/{options}
    asin = buy.split("/")[3]
    price = item.find("h4", string=re.compile(r"^Price: ")).get_text().removeprefix("Price: ")

    desc = BeautifulSoup(_read("item_page_desc"), "html.parser")
    feat = BeautifulSoup(_read("item_page_feat"), "html.parser")
    for sub in (desc, feat):  # "< Prev" on a sub-page leads back to this product's item page
        assert f"/item_page/{SESSION}/{asin}/" in sub.find("button", string="< Prev").find_parent("form")["action"]
    description = desc.find("p", class_="product-info").get_text()
    bullets = []
    # Upstream's template is `<li><p class="product-info"> {{bulletpoint}}</p></li>`: a leading space only. Each
    # bullet on this page ends in one space, its own (as 97% of the real catalogue's bullets do), so the product's
    # bullets keep it, and the text_rich Features lines show it once, not twice (issue 12).
    for p in feat.find_all("p", class_="product-info"):
        text = p.get_text()
        assert text.startswith(" ") and text.endswith(" ") and not text.endswith("  ")
        bullets.append(text[1:])
    keywords = _keywords(item.find("button", string="< Prev").find_parent("form")["action"])
    product = _product(asin, item.h2.get_text(), price, description=description, bullet_points=bullets,
                       options=options)
    return product, keywords, _instruction(item)


def _item_fixture(name: str) -> Fixture:
    product, keywords, instruction = _item_product()
    html = _read(name)
    assert _instruction(BeautifulSoup(html, "html.parser")) == instruction
    sub_page = {"item_page": None, "item_page_desc": "Description", "item_page_feat": "Features"}[name]
    state = PageState(kind="item" if sub_page is None else "sub", keywords=keywords, page=1, asin=product.asin,
                      options={}, sub_page=sub_page, results=[product])
    if sub_page is None:
        url = item_url(SESSION, state)
    else:  # upstream's sub-page URL carries Python's repr of the options
        url = f"{BASE_URL}/item_sub_page/{SESSION}/{product.asin}/{'+'.join(keywords)}/1/{sub_page}/{state.options}"
    return Fixture(html, state, instruction, product, url)


PAGES = ("results", "item_page", "item_page_desc", "item_page_feat")


@pytest.fixture(scope="module")
def fixtures() -> dict[str, Fixture]:
    return {"results": _results_fixture(), **{name: _item_fixture(name) for name in PAGES[1:]}}


# ---------------------------------------------------------------------------------------------------------
# The four real pages
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["text", "text_rich"])
@pytest.mark.parametrize("page", PAGES)
def test_page_text_matches_upstream(fixtures, page, mode):
    f = fixtures[page]
    assert f.ours(mode) == upstream_observation(f.html, mode, f.url)


@pytest.mark.parametrize("page", PAGES)
def test_clickables_match_upstream(fixtures, page):
    f = fixtures[page]
    expected = upstream_available_actions(f.html)
    assert expected["has_search_bar"] is False
    assert list(clickables(f.state, f.product)) == expected["clickables"]


def test_clickables_are_upstreams_verified_lists(fixtures):
    results = list(clickables(fixtures["results"].state, None))
    assert results[:3] == ["back to search", "next >", "b09gkfnqwt"]
    assert len(results) == 12
    item = fixtures["item_page"]
    assert list(clickables(item.state, item.product)) == [
        "back to search", "< prev", "description", "features", "reviews", "buy now",
        "black", "purple", "red", "6.5", "7.5", "8", "8.5", "9"]
    for sub in ("item_page_desc", "item_page_feat"):
        assert list(clickables(fixtures[sub].state, fixtures[sub].product)) == ["back to search", "< prev"]


def test_item_url_is_upstreams(fixtures):
    f = fixtures["item_page"]
    options = {"color": "purple", "size": "8"}
    state = PageState(kind="item", keywords=f.state.keywords, page=1, asin=f.product.asin, options=options)
    assert item_url(SESSION, state) == (f"http://127.0.0.1:3000/item_page/{SESSION}/B09P87V3LZ/"
                                        f"red+basketball+shoes/1/{json.dumps(options)}")


@pytest.mark.parametrize("options", [{"color": "purple"}, {"size": "8"}, {"color": "red", "size": "8.5"}, {}])
def test_item_page_text_rich_with_selected_options(fixtures, options):
    """The HTML text is the same whatever is selected; only the URL (with the options JSON) changes."""
    f = fixtures["item_page"]
    state = PageState(kind="item", keywords=f.state.keywords, page=1, asin=f.product.asin, options=options)
    url = item_url(SESSION, state)
    ours = render(page_nodes(state, f.instruction, f.product), "text_rich", url)
    assert ours == upstream_observation(f.html, "text_rich", url)
    clicked = [f"You have clicked {v}.\n" for v in reversed(list(options.values()))]
    assert ours.startswith("".join(clicked) + "Instruction:\n")
    assert ours.count("[clicked button]") == len(options)
    # text mode never shows the selection
    assert render(page_nodes(state, f.instruction, f.product), "text") == upstream_observation(f.html, "text")


def test_results_text_rich_unvisited_links(fixtures):
    f = fixtures["results"]
    ours = f.ours("text_rich")
    assert "\n\n[button] B09GKFNQWT [button_]\n" in ours
    assert "clicked" not in ours


def test_visited_links_text_rich(fixtures):
    f = fixtures["results"]
    visited = {"B09GKFNQWT", "B09N6SNKC1"}
    ours = f.ours("text_rich", visited=visited)
    assert ours == upstream_observation(f.html, "text_rich", f.url, visited_asins=visited)


def test_visited_links_are_marked(fixtures):
    """Whatever the closing tag, the visited ASINs (and only they) open with [clicked button]."""
    f = fixtures["results"]
    ours = f.ours("text_rich", visited={"B09GKFNQWT", "B09N6SNKC1"})
    assert re.findall(r"\n\[clicked button\] (\w+) ", ours) == ["B09GKFNQWT", "B09N6SNKC1"]
    assert ours.count("[button] B0") == 8


# ---------------------------------------------------------------------------------------------------------
# UPSTREAM.md 1.5/1.6 "Verified outputs" on real episodes
# ---------------------------------------------------------------------------------------------------------
def _episode(shop, mode="text", goal_idx=0) -> Episode:
    return Episode(shop, goal_idx, mode)


def test_start_page(real_shop):
    for goal_idx in (0, 1, 6):
        instr = real_shop.goal(goal_idx).instruction_text
        assert _episode(real_shop, "text", goal_idx).observation() == \
            f"WebShop [SEP] Instruction: [SEP] {instr} [SEP] Search"
        ep = _episode(real_shop, "text_rich", goal_idx)
        assert ep.observation() == f"WebShop\nInstruction: \n{instr}\n[button] Search [button_]\n"
        assert ep.available_actions() == {"has_search_bar": True, "clickables": ["search"]}
        assert ep.instruction_text == f"Instruction: {instr}"


def test_results_pages(real_shop):
    ep = _episode(real_shop)
    instr = ep.goal.instruction_text
    obs = ep.step(f"search[{ep.goal.instruction_without_price}]").observation
    first = ep.state.results[0]
    assert len(ep.state.results) == 50
    assert obs.startswith(f"Instruction: [SEP] {instr} [SEP] Back to Search [SEP] Page 1 (Total results: 50) "
                          f"[SEP] Next > [SEP] {first.asin} [SEP] {first.title} [SEP] {first.price_text} [SEP] ")
    assert "< Prev" not in obs
    page_one = [p.asin.lower() for p in ep.state.results[:10]]
    assert ep.available_actions() == {"has_search_bar": False,
                                      "clickables": ["back to search", "next >"] + page_one}

    obs = ep.step("click[next >]").observation
    assert f"[SEP] Page 2 (Total results: 50) [SEP] < Prev [SEP] Next > [SEP] {ep.state.results[10].asin} " in obs
    assert ep.available_actions()["clickables"][:3] == ["back to search", "< prev", "next >"]

    for page in range(3, 7):
        obs = ep.step("click[next >]").observation
    assert obs == (f"Instruction: [SEP] {instr} [SEP] Back to Search [SEP] Page 6 (Total results: 50) "
                   "[SEP] < Prev [SEP] Next >")
    assert ep.available_actions()["clickables"] == ["back to search", "< prev", "next >"]


def test_results_page_text_rich(real_shop):
    ep = _episode(real_shop, "text_rich")
    obs = ep.step(f"search[{ep.goal.instruction_without_price}]").observation
    first = ep.state.results[0]
    assert obs.startswith(f"Instruction:\n{ep.goal.instruction_text}\n[button] Back to Search [button_]\n"
                          f"Page 1 (Total results: 50)\n[button] Next > [button_]\n"
                          f"\n[button] {first.asin} [button_]\n{first.title}\n{first.price_text}\n")


def test_compact_pages_write_every_clickable_as_its_click_and_mark_the_selected_options(real_shop):
    """compact (ours): no instruction (the prompt states it), one element a line, each clickable of the page in
    brackets as its click takes it, so the prompt needs no action list; an item page marks what was clicked."""
    ep = _episode(real_shop, "compact")
    instr = ep.goal.instruction_text
    assert ep.observation() == "WebShop\nSearch"
    obs = ep.step(f"search[{ep.goal.name}]").observation
    lines = obs.split("\n")
    assert instr not in obs and "[SEP]" not in obs
    assert {c for c in ep.available_actions()["clickables"]} == {line[1:-1] for line in lines if line[0] == "["}
    first = ep.state.results[0]
    assert lines[:6] == ["[back to search]", "Page 1 (Total results: 50)", "[next >]", f"[{first.asin.lower()}]",
                         first.title.strip(), first.price_text]
    product = next(p for p in ep.state.results[:10] if len(p.options) >= 2)
    obs = ep.step(f"click[{product.asin.lower()}]").observation
    clicks = ep.available_actions()["clickables"]
    assert instr not in obs and {line[1:-1] for line in obs.split("\n") if line[0] == "["} == set(clicks)
    (group, values), (other, others) = list(product.options.items())[:2]
    assert "(selected)" not in obs and f"\n{group}\n[{values[0]}]\n" in obs
    obs = ep.step(f"click[{others[-1]}]").observation
    assert obs.count("(selected)") == 1 and f"[{others[-1]}] (selected)" in obs.split("\n")


def test_item_and_sub_pages(real_shop):
    ep = _episode(real_shop)
    instr = ep.goal.instruction_text
    ep.step(f"search[{ep.goal.name}]")
    product = next(p for p in ep.state.results[:10] if p.options and p.description.strip())
    obs = ep.step(f"click[{product.asin.lower()}]").observation
    option_text = " [SEP] ".join(f"{name} [SEP] " + " [SEP] ".join(values) for name, values in product.options.items())
    assert obs == (f"Instruction: [SEP] {instr} [SEP] Back to Search [SEP] < Prev [SEP] {option_text} [SEP] "
                   f"{product.title} [SEP] Price: {product.price_text} [SEP] Rating: N.A. [SEP] Description "
                   "[SEP] Features [SEP] Reviews [SEP] Buy Now")
    values = [v for vs in product.options.values() for v in vs]
    assert ep.available_actions()["clickables"] == \
        ["back to search", "< prev", "description", "features", "reviews", "buy now"] + list(dict.fromkeys(values))

    head = f"Instruction: [SEP] {instr} [SEP] Back to Search [SEP] < Prev"
    assert ep.step("click[description]").observation == f"{head} [SEP] {product.description.strip()}"
    assert ep.available_actions()["clickables"] == ["back to search", "< prev"]
    ep.step("click[< prev]")
    assert ep.step("click[features]").observation == " [SEP] ".join([head] + [b.strip() for b in product.bullet_points])
    ep.step("click[< prev]")
    assert ep.step("click[reviews]").observation == f"{head} [SEP] No reviews found"


def test_done_page_head(real_shop):
    ep = _episode(real_shop)
    ep.step(f"search[{ep.goal.name}]")
    product = ep.state.results[0]
    ep.step(f"click[{product.asin.lower()}]")
    for name, values in product.options.items():
        ep.step(f"click[{values[0]}]")
    result = ep.step("click[buy now]")
    assert result.observation.startswith(
        "Thank you for shopping with us! [SEP] Your code: [SEP] None [SEP] (Paste it in your MTurk interface.) "
        f"[SEP] Purchased [SEP] asin [SEP] {product.asin} [SEP] options [SEP] "
        f"{json.dumps(ep.state.options, sort_keys=True)} [SEP] ")
    assert f" [SEP] Your score (min 0.0, max 1.0) [SEP] {result.reward} [SEP] Reward Details [SEP] " in \
        result.observation


def test_done_page_reward_details_is_none(real_shop):
    ep = _episode(real_shop)
    ep.step(f"search[{ep.goal.name}]")
    ep.step(f"click[{ep.state.results[0].asin.lower()}]")
    result = ep.step("click[buy now]")
    assert result.observation.endswith(
        f"Your score (min 0.0, max 1.0) [SEP] {result.reward} [SEP] Reward Details [SEP] None")
