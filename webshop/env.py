"""The WebShop text environment: upstream `WebAgentTextEnv` transitions, in process, seeded, batched.

`Shop` holds what every episode shares (catalogue, goals, prices, search engine). `Episode` is one session
stepping upstream's transition table; `BatchEnv` resets and steps many episodes at once by goal index, which
is how the rollout stage drives every live episode together.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from webshop.catalogue import Catalogue, Product, Rows
from webshop.goals import Goal, GoalSet, build_goals
from webshop.pages import (BACK_TO_SEARCH, BUY_NOW, NEXT_PAGE, PREV_PAGE, SUB_PAGES, PageState, clickables,
                           item_url, page_nodes, render)
from webshop.reward import get_reward
from webshop.search import SearchEngine

OBSERVATION_MODES = ("text", "text_rich", "compact")  # webshop/pages.py: upstream's two, then ours
DEFAULT_MAX_STEPS = 15
# Upstream `parse_action`: greedy, anchored at the start only, so `search[a [b] c]` parses as name `search[a `.
_ACTION = re.compile(r"(.+)\[(.+)\]")


def parse_action(action: str) -> tuple[str, str | None]:
    m = _ACTION.match(action)
    return (action, None) if m is None else (m.group(1), m.group(2))


def invalid_reason(name: str, arg: str | None) -> str:
    """Why an action changed nothing, in one line (ours: upstream only returns the same page)."""
    if arg is None:
        return "no action: expected search[keywords] or click[one of the actions]"
    if name == "click" and arg == "search":
        return "use search[keywords] to search"
    if name == "click":
        return f"'{arg}' is not clickable on this page"
    return f"unknown action '{name}': expected search or click"


class Shop:
    """Catalogue + goals + search: built once, shared by every episode (read-only while stepping)."""

    def __init__(self, catalogue: Catalogue, goals: GoalSet | None = None, show_attrs: bool = False,
                 search_engine: SearchEngine | None = None):
        self.catalogue = catalogue
        self.goals = goals if goals is not None else build_goals(catalogue)
        # built here unless given (storage.catalogues.open_search_index keeps one beside a stored catalogue)
        self.search_engine = search_engine or SearchEngine(catalogue.search_texts())
        self.show_attrs = show_attrs

    def search(self, query: str) -> Rows:
        """The query's top-50 products, decoded only when a page shows them."""
        return self.catalogue.rows(self.search_engine.search(query))

    def goal(self, goal_idx: int) -> Goal:
        if not 0 <= goal_idx < len(self.goals.goals):
            raise IndexError(f"goal index {goal_idx} is outside [0, {len(self.goals.goals)})")
        return self.goals.goals[goal_idx]


@dataclass
class StepResult:
    observation: str
    reward: float
    done: bool
    info: dict = field(default_factory=dict)  # valid, invalid_reason, page, end_reason, reward_info (on buy)


class Episode:
    """One upstream session on one goal. `step` returns (observation, reward, done, info) like the gym env."""

    def __init__(self, shop: Shop, goal_idx: int, observation_mode: str = "text",
                 max_steps: int = DEFAULT_MAX_STEPS):
        if observation_mode not in OBSERVATION_MODES:
            raise ValueError(f"observation mode {observation_mode!r} is not one of {', '.join(OBSERVATION_MODES)}")
        if max_steps < 1:
            raise ValueError(f"max_steps must be at least 1, got {max_steps}")
        self.shop, self.goal_idx, self.goal = shop, goal_idx, shop.goal(goal_idx)
        self.mode, self.max_steps = observation_mode, max_steps
        self.session_id = str(goal_idx)
        self.state = PageState()
        self.steps, self.done, self.end_reason = 0, False, None
        self.actions: list[str] = []  # every action taken, in order
        self.invalid_reason: str | None = None  # why the last action changed nothing (None: it was valid)

    @property
    def instruction_text(self) -> str:
        return "Instruction: " + self.goal.instruction_text

    @property
    def product(self) -> Product | None:
        return self.shop.catalogue.product(self.state.asin) if self.state.asin else None

    def observation(self) -> str:
        nodes = page_nodes(self.state, self.goal.instruction_text, self.product, self.shop.show_attrs)
        url = item_url(self.session_id, self.state) if self.state.kind == "item" else ""
        return render(nodes, self.mode, url, self.state.visited, self.state.options.values())

    def available_actions(self) -> dict:
        """{'has_search_bar': bool, 'clickables': [...]} in upstream's order."""
        return {"has_search_bar": self.state.kind == "search",
                "clickables": list(clickables(self.state, self.product, self.shop.show_attrs))}

    def step(self, action: str) -> StepResult:
        if self.done:
            raise RuntimeError(f"episode on goal {self.goal_idx} is over ({self.end_reason}); reset first")
        name, arg = parse_action(action)
        arg = arg.lower() if arg is not None else None
        reward, valid = 0.0, True
        targets = clickables(self.state, self.product, self.shop.show_attrs)
        if name == "search" and arg:
            self._search(arg.split(" "), page=1)
        elif name == "click" and arg in targets and arg != "search":
            reward = self._click(arg, targets[arg])
        else:
            valid = False  # upstream: nothing changes, the same page is observed again
        self.actions.append(action)
        self.invalid_reason = None if valid else invalid_reason(name, arg)
        self.steps += 1
        if self.state.kind == "done":
            self.done, self.end_reason = True, "bought"
        elif self.steps >= self.max_steps:
            self.done, self.end_reason, reward = True, "step_cap", 0.0
        info = {"valid": valid, "invalid_reason": self.invalid_reason, "page": self.state.kind,
                "end_reason": self.end_reason,
                "reward_info": self.state.reward_info if self.end_reason == "bought" else None}
        return StepResult(self.observation(), reward, self.done, info)

    def _search(self, keywords: list[str], page: int) -> None:
        s = self.state
        if keywords != s.keywords:  # the ranking is deterministic: page turns reuse it
            s.results = self.shop.search(" ".join(keywords))
        s.kind, s.keywords, s.page, s.asin, s.options, s.sub_page = "results", keywords, page, None, {}, None

    def _click(self, text: str, target: tuple) -> float:
        s = self.state
        if text == BUY_NOW.lower():
            return self._buy()
        if text == BACK_TO_SEARCH.lower():  # a new session on the same goal
            self.state = PageState()
        elif text == NEXT_PAGE.lower() and s.kind == "results":
            self._search(s.keywords, s.page + 1)
        elif text == PREV_PAGE.lower() and s.kind == "results":
            self._search(s.keywords, s.page - 1)
        elif text == PREV_PAGE.lower() and s.kind == "sub":
            s.kind, s.sub_page = "item", None
        elif text == PREV_PAGE.lower() and s.kind == "item":
            self._search(s.keywords, s.page)
        elif text in (p.lower() for p in SUB_PAGES):
            s.kind, s.sub_page = "sub", text.capitalize()
        else:  # a product link or an option value: the item page
            if target[0] == "link":
                s.asin = text.upper()
                s.visited.add(s.asin)
            elif target[0] == "option":
                s.options[target[1]] = text
            s.kind = "item"
        return 0.0

    def _buy(self) -> float:
        s = self.state
        price = self.shop.goals.product_prices[s.asin]
        s.reward, s.reward_info = get_reward(self.product, self.goal, price, s.options)
        s.kind = "done"
        return s.reward


class BatchEnv:
    """Many episodes stepped together. Reset by goal indices; step the live ones with one action each."""

    def __init__(self, shop: Shop, observation_mode: str = "text", max_steps: int = DEFAULT_MAX_STEPS):
        self.shop, self.mode, self.max_steps = shop, observation_mode, max_steps
        self.episodes: list[Episode] = []

    def reset(self, goal_indices: list[int]) -> list[str]:
        self.episodes = [Episode(self.shop, g, self.mode, self.max_steps) for g in goal_indices]
        return [e.observation() for e in self.episodes]

    def live(self) -> list[int]:
        """Positions (in reset order) of the episodes that are not over."""
        return [i for i, e in enumerate(self.episodes) if not e.done]

    def step(self, actions: dict[int, str]) -> dict[int, StepResult]:
        """Step episode i with actions[i] for every i given; each must be live."""
        return {i: self.episodes[i].step(a) for i, a in actions.items()}
