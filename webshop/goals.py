"""Goals (instructions + target product, attributes, options, price cap) built exactly like upstream.

Upstream draws product prices (`random.uniform` over a price range) and each goal's price cap
(`random.sample` of two of four candidates) from the *unseeded* global RNG, so its prices and "price lower
than" clauses change from run to run. Here both come from one `random.Random(seed)`, in upstream's call order,
and the goal order is upstream's: `random.seed(233); random.shuffle(goals)`.
"""
from __future__ import annotations

import itertools
import random
from collections import defaultdict
from dataclasses import dataclass

from webshop.catalogue import Catalogue

PRICE_RANGE = [10.0 * i for i in range(1, 100)]
NO_PRICE_CAP = 1000000
GOAL_ORDER_SEED = 233  # upstream's fixed shuffle seed: goal i is the same goal for everyone
SPLITS = ("test", "eval", "train")


@dataclass(slots=True)
class Goal:
    """One shopping goal. `goal_options` is a dict for synthetic goals and a list for human goals, as upstream."""

    asin: str
    instruction_text: str
    attributes: list[str]
    goal_options: dict[str, str] | list[str]
    price_upper: float
    weight: float
    name: str
    category: str
    query: str
    product_category: str
    kind: str  # "synthetic" | "human"

    @property
    def instruction_without_price(self) -> str:
        cut = self.instruction_text.rfind(", and price lower than ")
        return self.instruction_text if cut < 0 else self.instruction_text[:cut]


@dataclass
class GoalSet:
    """All goals of a catalogue in upstream order, with the product prices the reward uses."""

    goals: list[Goal]
    product_prices: dict[str, float]
    seed: int
    kind: str  # "synthetic" | "human"

    def __len__(self) -> int:
        return len(self.goals)

    def split(self, name: str, test_size: int | None = None, eval_size: int | None = None) -> range:
        """Goal indices of a split: test = [0, 500), eval = [500, 1500), train = the rest (upstream's).

        A goal set under 3,000 goals (a small generated catalogue) is split 20% / 10% / 70% instead, so
        that it has training goals.
        """
        small = len(self.goals) < 3000
        test_size = test_size if test_size is not None else (len(self.goals) // 5 if small else 500)
        eval_size = eval_size if eval_size is not None else (len(self.goals) // 10 if small else 1000)
        bounds = {"test": (0, test_size), "eval": (test_size, test_size + eval_size),
                  "train": (test_size + eval_size, len(self.goals))}
        if name not in bounds:
            raise ValueError(f"split {name!r} is not one of {', '.join(SPLITS)}")
        lo, hi = bounds[name]
        return range(min(lo, len(self.goals)), min(hi, len(self.goals)))


def product_prices(catalogue: Catalogue, rng: random.Random) -> dict[str, float]:
    """Upstream `generate_product_prices`: 100.0 if unpriced, the price, or uniform over a two-value range."""
    prices = {}
    for asin, pricing in catalogue.prices().items():
        if not pricing:
            prices[asin] = 100.0
        elif len(pricing) == 1:
            prices[asin] = pricing[0]
        else:
            prices[asin] = rng.uniform(*pricing[:2])
    return prices


def _price_cap(price: float, rng: random.Random) -> tuple[float, str]:
    candidates = [p for p in PRICE_RANGE if p > price][:4]
    if len(candidates) >= 2:
        upper = sorted(rng.sample(candidates, 2))[1]
        return upper, f", and price lower than {upper:.2f} dollars"
    return NO_PRICE_CAP, ""


def synthetic_goals(catalogue: Catalogue, prices: dict[str, float], rng: random.Random) -> list[Goal]:
    """One goal per combination of option values of every product with an instruction (option names sorted)."""
    goals: list[Goal] = []
    attribute_counts: dict[str, int] = defaultdict(int)
    for p in catalogue.products_where("instruction_text"):
        if not p.instruction_attributes:
            raise ValueError(f"product {p.asin}: has an instruction but no instruction_attributes")
        upper, price_text = _price_cap(prices[p.asin], rng)
        names = sorted(p.options)
        for combination in itertools.product(*(p.options[n] for n in names)):
            options = dict(zip(names, combination))
            option_text = ", and ".join(f"{k}: {v}" for k, v in options.items())
            option_text = f" with {option_text}" if option_text else ""
            goals.append(Goal(
                asin=p.asin, instruction_text=f"{p.instruction_text}{option_text}{price_text}",
                attributes=p.instruction_attributes, goal_options=options, price_upper=upper, weight=0.0,
                name=p.title, category=p.category, query=p.query, product_category=p.product_category,
                kind="synthetic",
            ))
            for a in p.instruction_attributes:
                attribute_counts[a] += 1
    for g in goals:  # rarer attributes weigh more (upstream's sampling weight)
        g.weight = sum(1.0 / attribute_counts[a] for a in g.attributes) / len(g.attributes)
    return goals


def human_goals(catalogue: Catalogue, prices: dict[str, float], rng: random.Random) -> list[Goal]:
    """One goal per crowd-sourced instruction with at least one attribute; weight 1."""
    goals = []
    for p in catalogue.products_where("human_instructions"):
        for h in p.human_instructions:
            if not h.instruction_attributes:
                continue
            upper, price_text = _price_cap(prices[p.asin], rng)
            goals.append(Goal(
                asin=p.asin, instruction_text=h.instruction.strip(".") + price_text,
                attributes=h.instruction_attributes, goal_options=h.instruction_options, price_upper=upper,
                weight=1.0, name=p.title, category=p.category, query=p.query,
                product_category=p.product_category, kind="human",
            ))
    return goals


def build_goals(catalogue: Catalogue, kind: str = "synthetic", seed: int = 0) -> GoalSet:
    """Prices then goals from `Random(seed)`, in upstream's order of draws; then upstream's seed-233 shuffle."""
    builders = {"synthetic": synthetic_goals, "human": human_goals}
    if kind not in builders:
        raise ValueError(f"goal kind {kind!r} is not one of {', '.join(builders)}")
    rng = random.Random(seed)
    prices = product_prices(catalogue, rng)
    goals = builders[kind](catalogue, prices, rng)
    random.Random(GOAL_ORDER_SEED).shuffle(goals)
    return GoalSet(goals, prices, seed, kind)
