"""Scripted policies and the loop that scores them.

`rule` is the WebShop paper's rule baseline: search the instruction, open the first result, buy.
`oracle` knows the goal: it searches, pages through the results (then searches again by the product's title)
until it sees the target ASIN, selects the goal's options and buys. It is the upper bound for learned
policies and the source of demonstrations for supervised warm-starts.

A policy maps (episode, memory) to the next action string; `run_policy` steps every live episode together.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Callable

from webshop.env import BatchEnv, Episode, Shop
from webshop.metrics import score_ci, wilson
from webshop.pages import PRODUCT_WINDOW
from webshop.reward import load_tagger

Policy = Callable[[Episode, dict], str]
# An expert that labels a played turn: (episode before the step, memory, the action played) -> the action to
# imitate on that state, or None for a turn that is not a training row.
Labeller = Callable[[Episode, dict, str], "str | None"]


def rule_policy(episode: Episode, memory: dict) -> str:
    kind = episode.state.kind
    if kind == "search":
        return f"search[{episode.goal.instruction_without_price}]"
    if kind == "results" and episode.state.results:
        return f"click[{episode.state.results[0].asin.lower()}]"
    if kind == "item":
        return "click[buy now]"
    return "click[back to search]"  # no results: nothing to buy; the step cap ends the episode


def oracle_policy(episode: Episode, memory: dict) -> str:
    """Find the goal's product, choose its options, buy.

    Queries in order: the instruction without its price clause, then the product's title. Each is paged
    through while the target is not on the page and a next page has products.
    """
    goal, state = episode.goal, episode.state
    target = goal.asin.lower()
    clickables = episode.available_actions()["clickables"]
    queries = memory.setdefault("queries", [goal.instruction_without_price.lower(), goal.name.lower()])
    if state.kind == "item" and (state.asin == goal.asin or memory.get("gave_up")):
        for value in _wanted_options(goal):
            if value in clickables and state.options.get(_option_of(episode, value)) != value:
                return f"click[{value}]"
        return "click[buy now]"
    if state.kind == "results":
        if target in clickables:
            return f"click[{target}]"
        if state.page * PRODUCT_WINDOW < len(state.results):
            return "click[next >]"
    if state.kind in ("item", "sub"):
        return "click[< prev]"
    if queries:
        return f"search[{queries.pop(0)}]"
    # the target cannot be found: buy the best-ranked product rather than walk into the step cap
    if state.kind == "results" and state.results:
        memory["gave_up"] = True
        return f"click[{state.results[0].asin.lower()}]"
    return f"search[{goal.instruction_without_price.lower()}]"


def goal_item_oracle(episode: Episode, memory: dict, played: str) -> str | None:
    """DAgger's expert for a learned policy: the oracle's action on the goal's own item page (click the options the
    instruction names, then buy), whatever the policy played; None elsewhere. There the right action follows from
    what the prompt shows; on the way to that page the oracle acts on the goal's ASIN (its clicks, its next pages,
    its search by the product's title), which no prompt carries, so a policy trained on those labels would learn
    to guess."""
    if _on_goal_item(episode):
        return oracle_policy(episode, memory)
    return None


@dataclass(frozen=True)
class NoisyOracle:
    """DART's noise-injected demonstrator (Laskey et al., 2017) for the warm start: the oracle, except that on the
    goal's own item page each turn is, with probability `rate`, a mistake that leaves the goal's selections as they
    are: a re-click of an option already selected, or a value of an option group the instruction names nothing in.
    `act` plays; `label` (a `Labeller`) keeps a played turn with the oracle's action and drops a mistake. The
    oracle then goes on from the state the mistake left, so the demonstrations hold the states a learned policy
    gets itself into (a re-clicked or stray option in its previous actions) with the right next action, which the
    plain oracle's never visit: the 100-demonstration warm start spent 26 of its 27 step-capped test episodes
    re-clicking one option. A mistake never displaces one of the goal's values: the oracle's recovery would then
    re-click the value it clicked last, and a warm start on such recoveries (any other option click as a mistake,
    the `dart30` run in the README) learned to repeat its last click (121 of 200 test episodes at the step cap).
    The draw depends on (seed, goal, step) only, so a demonstration is reproducible."""
    rate: float
    seed: int = 0

    def act(self, episode: Episode, memory: dict) -> str:
        action = oracle_policy(episode, memory)
        mistakes = _harmless_option_clicks(episode, action) if _on_goal_item(episode) else []
        rng = random.Random(f"{self.seed}/{episode.goal_idx}/{episode.steps}")
        if mistakes and rng.random() < self.rate:
            return f"click[{rng.choice(mistakes)}]"
        return action

    def label(self, episode: Episode, memory: dict, played: str) -> str | None:
        """`played` when it is the oracle's action, None for a mistake. Mistakes happen only on the goal's item
        page, where the oracle's action depends on the page alone (asking it again changes no memory)."""
        if _on_goal_item(episode) and played != oracle_policy(episode, memory):
            return None
        return played


def _on_goal_item(episode: Episode) -> bool:
    return episode.state.kind == "item" and episode.state.asin == episode.goal.asin


def _wanted_options(goal) -> list[str]:
    """The option values the goal's instruction names."""
    return list(goal.goal_options.values()) if isinstance(goal.goal_options, dict) else list(goal.goal_options)


def _harmless_option_clicks(episode: Episode, action: str) -> list[str]:
    """The item page's option values, as clickable, other than `action`'s, whose click changes none of the goal's
    selections: a value already selected, or one of a group the instruction names no value of."""
    clickables = set(episode.available_actions()["clickables"])
    named = {_option_of(episode, v) for v in _wanted_options(episode.goal)}
    selected = set(episode.state.options.values())
    values = [v for group in episode.product.options.values() for v in group]
    return [v for v in dict.fromkeys(values) if v in clickables and f"click[{v}]" != action
            and (v in selected or _option_of(episode, v) not in named)]


def _option_of(episode: Episode, value: str) -> str | None:
    """The option group a value selects (the last group holding it, as upstream's clickables do)."""
    group = None
    for name, values in episode.product.options.items():
        if value in values:
            group = name
    return group


POLICIES: dict[str, Policy] = {"rule": rule_policy, "oracle": oracle_policy}


@dataclass
class EpisodeResult:
    goal_idx: int
    reward: float
    success: bool
    steps: int
    end_reason: str
    reward_info: dict | None


def run_policy(shop: Shop, policy: Policy, goal_indices: list[int], max_steps: int = 15,
               observation_mode: str = "text") -> list[EpisodeResult]:
    """Run one episode per goal, all stepped together, until each buys or hits the step cap."""
    env = BatchEnv(shop, observation_mode, max_steps)
    env.reset(goal_indices)
    memories = [dict() for _ in goal_indices]
    results: dict[int, EpisodeResult] = {}
    while live := env.live():
        steps = env.step({i: policy(env.episodes[i], memories[i]) for i in live})
        for i, r in steps.items():
            if r.done:
                e = env.episodes[i]
                results[i] = EpisodeResult(e.goal_idx, r.reward, r.reward == 1.0, e.steps, e.end_reason,
                                           r.info["reward_info"])
    return [results[i] for i in range(len(goal_indices))]


def summarize(results: list[EpisodeResult], seconds: float) -> dict:
    """Score (100 x mean reward, 95% normal CI) and success rate (reward == 1, 95% Wilson CI: its centre and
    half-width), the intervals trained policies are reported with (webshop/metrics.py)."""
    n = len(results)
    score, score_half = score_ci([r.reward for r in results])
    successes = sum(r.success for r in results)
    centre, half = wilson(successes, n)
    return {
        "episodes": n,
        "score": round(score, 2),
        "score_ci95": round(score_half, 2),
        "success_rate": round(successes / n, 4),
        "success_centre": round(centre, 4),
        "success_ci95": round(half, 4),
        "mean_steps": round(sum(r.steps for r in results) / n, 2),
        "episodes_per_s": round(n / seconds, 1) if seconds > 0 else None,
    }


def evaluate(shop: Shop, policy_name: str, goal_indices: list[int], max_steps: int = 15) -> dict:
    if policy_name not in POLICIES:
        raise ValueError(f"policy {policy_name!r} is not one of {', '.join(POLICIES)}")
    load_tagger()  # a one-off cost, kept out of episodes/s
    start = time.perf_counter()
    results = run_policy(shop, POLICIES[policy_name], goal_indices, max_steps)
    return summarize(results, time.perf_counter() - start)
