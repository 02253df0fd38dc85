"""Pages as upstream's Flask templates show them, rendered straight to observation text.

Upstream renders HTML with Jinja and converts it back to text with BeautifulSoup (`findAll(text=True)`, minus
style/script/head/title/meta and comments). We skip the HTML: each page is the list of text nodes BeautifulSoup
would find, with the element that holds each one (`Node.role`), which is all the two text modes need:

  text       ' [SEP] '.join(node.strip())
  compact    ours, not upstream's (a shorter prompt for a small agent): one node a line, without the instruction
             (the prompt states it once), every clickable written as its click takes it, `[b09nd8p2qr]`,
             `[buy now]`, `[large]`, a selected option `[large] (selected)` (from the session's options, not the URL:
             text_rich misses a value holding a quote);
             the search page's Search button stays plain text (it is typed into with search[...], not clicked)
  text_rich  one line per node: buttons `[button] t [button_]`; option labels `  [button] t [button_]`, or
             `  [clicked button] t [clicked button_]` with "You have clicked t.\n" prepended when '"t"' occurs in
             the item-page URL; product links `\n[button] ASIN [button_]`, or
             `\n[clicked button] ASIN [clicked button_]` once visited; anything else verbatim.

A template slot becomes a node by BeautifulSoup's rules: an empty string gives no node, a whitespace-only string
gives '\n' (dropped) if it holds a newline and ' ' otherwise, anything else is kept as it is.
"""
from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from webshop.catalogue import Product

BASE_URL = "http://127.0.0.1:3000"
PRODUCT_WINDOW = 10  # results per page
BACK_TO_SEARCH, NEXT_PAGE, PREV_PAGE, BUY_NOW = "Back to Search", "Next >", "< Prev", "Buy Now"
SUB_PAGES = ("Description", "Features", "Reviews", "Attributes")


class Node(NamedTuple):
    text: str
    role: str  # "text" | "instruction" (the goal's text and its label; compact leaves them out) | "button"
    #            | "label" | "link"


@dataclass
class PageState:
    """Where one session is. Mirrors upstream's session dict plus the current page."""

    kind: str = "search"                 # search | results | item | sub | done
    keywords: list[str] | None = None
    page: int | None = None
    asin: str | None = None
    options: dict[str, str] = field(default_factory=dict)
    sub_page: str | None = None
    visited: set[str] = field(default_factory=set)    # ASINs opened this session (text_rich marks them)
    results: Sequence[Product] = ()      # the current search's top-50 products
    reward: float = 0.0
    reward_info: dict | None = None


def _slot(s: str) -> str | None:
    if s == "":
        return None
    if s.isspace():
        return None if "\n" in s else " "
    return s


def _nodes(*items: Node | None) -> list[Node]:
    return [n for n in items if n is not None]


def _text(s: str, role: str = "text") -> Node | None:
    s = _slot(s)
    return None if s is None else Node(s, role)


def _sub_page_buttons(show_attrs: bool) -> tuple[str, ...]:
    """The item page's sub-page buttons: Attributes only when the shop shows attributes."""
    return tuple(s for s in SUB_PAGES if s != "Attributes" or show_attrs)


def _header(instruction: str) -> list[Node]:
    return _nodes(Node("Instruction:", "instruction"), _text(instruction, "instruction"),
                  Node(BACK_TO_SEARCH, "button"))


def page_nodes(state: PageState, instruction: str, product: Product | None, show_attrs: bool = False) -> list[Node]:
    """The visible text nodes of the current page, in document order."""
    if state.kind == "search":
        return _nodes(Node("WebShop", "text"), Node("Instruction: ", "instruction"),
                      _text(instruction, "instruction"), Node("Search", "button"))
    if state.kind == "results":
        total = len(state.results)
        nodes = _header(instruction) + [Node(f"Page {state.page} (Total results: {total})", "text")]
        if state.page > 1:
            nodes.append(Node(PREV_PAGE, "button"))
        nodes.append(Node(NEXT_PAGE, "button"))
        for p in results_on_page(state):
            nodes += _nodes(Node(p.asin, "link"), _text(p.title), _text(p.price_text))
        return nodes
    if state.kind == "item":
        nodes = _header(instruction) + [Node(PREV_PAGE, "button")]
        for name, values in product.options.items():
            nodes += _nodes(_text(name), *(_text(v, "label") for v in values))
        nodes += _nodes(_text(product.title), Node(f"Price: {product.price_text}", "text"),
                        Node("Rating: N.A.", "text"))
        nodes += [Node(s, "button") for s in _sub_page_buttons(show_attrs)]
        return nodes + [Node(BUY_NOW, "button")]
    if state.kind == "sub":
        nodes = _header(instruction) + [Node(PREV_PAGE, "button")]
        if state.sub_page == "Description":
            body = [_text(product.description)]
        elif state.sub_page == "Features":
            # upstream features_page.html: <li><p class="product-info"> {{bulletpoint}}</p></li> (a leading space
            # only: real bullets mostly end in a space of their own)
            body = [_text(f" {b}") for b in product.bullet_points]
        elif state.sub_page == "Reviews":  # upstream never loads reviews
            body = [Node("No reviews found", "text")]
        else:
            body = [_text(f" {a}") for a in product.attributes] + \
                   [_text(product.category), _text(product.query), _text(product.product_category)]
        return nodes + _nodes(*body)
    return _done_nodes(state, product)


def _done_nodes(state: PageState, product: Product) -> list[Node]:
    # The episode is over on this page; no policy acts on it. The reward parts are in the step info.
    return _nodes(
        Node("Thank you for shopping with us!", "text"), Node("Your code: ", "text"), Node("None", "text"),
        Node(" (Paste it in your MTurk interface.)", "text"), Node("Purchased", "text"), Node("asin", "text"),
        _text(state.asin), Node("options", "text"), Node(json.dumps(state.options, sort_keys=True), "text"),
        Node("Your score (min 0.0, max 1.0)", "text"), Node(str(state.reward), "text"),
        Node("Reward Details ", "text"), Node("None", "text"),  # upstream renders it without reward_info
    )


def results_on_page(state: PageState) -> list[Product]:
    return state.results[(state.page - 1) * PRODUCT_WINDOW: state.page * PRODUCT_WINDOW]


def item_url(session_id: str, state: PageState) -> str:
    """Upstream's item-page URL; text_rich marks an option clicked when '"value"' occurs in it."""
    return (f"{BASE_URL}/item_page/{session_id}/{state.asin}/{'+'.join(state.keywords or [])}/"
            f"{state.page}/{json.dumps(state.options)}")


def render(nodes: list[Node], mode: str, url: str = "", visited: set[str] = frozenset(),
           selected: Collection[str] = ()) -> str:
    if mode == "text":
        return " [SEP] ".join(n.text.strip() for n in nodes)
    if mode == "compact":
        return _compact(nodes, selected)
    if mode != "text_rich":
        raise ValueError(f"observation mode {mode!r} is not one of text, text_rich, compact")
    lines, clicked = [], []
    for t, role in nodes:
        if role == "button":
            lines.append(f"[button] {t} [button_]")
        elif role == "label":
            if f'"{t}"' in url:
                lines.append(f"  [clicked button] {t} [clicked button_]")
                clicked.append(f"You have clicked {t}.\n")
            else:
                lines.append(f"  [button] {t} [button_]")
        elif role == "link":
            lines.append(f"\n[clicked button] {t} [clicked button_]" if t in visited else f"\n[button] {t} [button_]")
        else:
            lines.append(t)
    return "".join(reversed(clicked)) + "".join(line + "\n" for line in lines)


def _compact(nodes: list[Node], selected: Collection[str]) -> str:
    lines = []
    for t, role in nodes:
        t = t.strip()
        if role == "instruction":
            continue
        if role == "label":
            lines.append(f"[{t}] (selected)" if t in selected else f"[{t}]")
        elif role == "link" or (role == "button" and t != "Search"):
            lines.append(f"[{t.lower()}]")
        else:
            lines.append(t)
    return "\n".join(lines)


def clickables(state: PageState, product: Product | None, show_attrs: bool = False) -> dict[str, tuple]:
    """Upstream `get_available_actions`: lower-cased button texts, then product links, then option values.

    Keyed like upstream's `text_to_clickable`: a later key that repeats an earlier one replaces its target but
    keeps its place (two option groups sharing a value: the last group wins).
    """
    out: dict[str, tuple] = {}
    if state.kind == "search":
        out["search"] = ("button",)
    elif state.kind == "results":
        out[BACK_TO_SEARCH.lower()] = ("button",)
        if state.page > 1:
            out[PREV_PAGE.lower()] = ("button",)
        out[NEXT_PAGE.lower()] = ("button",)
        for p in results_on_page(state):
            out[p.asin.lower()] = ("link",)
    elif state.kind == "item":
        for b in (BACK_TO_SEARCH, PREV_PAGE) + _sub_page_buttons(show_attrs) + (BUY_NOW,):
            out[b.lower()] = ("button",)
        for name, values in product.options.items():
            for v in values:
                out[v] = ("option", name)
    elif state.kind == "sub":
        out[BACK_TO_SEARCH.lower()] = ("button",)
        out[PREV_PAGE.lower()] = ("button",)
    return out
