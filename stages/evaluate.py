"""Eval: greedy episodes of a checkpoint on held-out goals (the test split) and their summary table.

    eval.parquet   iteration, split, n, score, score_ci, success_rate, success_ci, checkpoint

score = 100 x mean reward with a 95% normal-approximation half-width (1.96 x sample std / sqrt n);
success_rate = share of episodes with reward 1, with a 95% Wilson score interval (reported as its half-width
around the Wilson centre, so it stays inside [0, 1] at 0% or 100%): the numbers WebShop papers report.
"""
from __future__ import annotations

import math
from dataclasses import replace

import pyarrow as pa

from stages.rollout import RolloutParams, episode_requests, rollout_stage

Z95 = 1.959964
EVAL_SCHEMA = pa.schema([
    ("iteration", pa.int32()), ("split", pa.string()), ("n", pa.int32()), ("score", pa.float64()),
    ("score_ci", pa.float64()), ("success_rate", pa.float64()), ("success_ci", pa.float64()),
    ("success_centre", pa.float64()), ("checkpoint", pa.string()),
])


def score_ci(rewards: list[float]) -> tuple[float, float]:
    """(100 x mean, 95% half-width) of rewards in [0, 1]."""
    n = len(rewards)
    mean = sum(rewards) / n
    var = sum((r - mean) ** 2 for r in rewards) / (n - 1) if n > 1 else 0.0
    return 100 * mean, 100 * Z95 * math.sqrt(var / n)


def wilson(successes: int, n: int) -> tuple[float, float]:
    """(centre, half-width) of the 95% Wilson score interval of a proportion."""
    p = successes / n
    denom = 1 + Z95 ** 2 / n
    centre = (p + Z95 ** 2 / (2 * n)) / denom
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95 ** 2 / (4 * n * n)) / denom
    return centre, half


def summarize(episode_rows: list[dict], iteration: int, split: str, checkpoint: str) -> pa.Table:
    rewards = [e["reward"] for e in episode_rows]
    successes = sum(e["success"] for e in episode_rows)
    score, s_ci = score_ci(rewards)
    centre, half = wilson(successes, len(rewards))
    row = {"iteration": iteration, "split": split, "n": len(rewards), "score": score, "score_ci": s_ci,
           "success_rate": successes / len(rewards), "success_ci": half, "success_centre": centre,
           "checkpoint": checkpoint}
    return pa.Table.from_pylist([row], schema=EVAL_SCHEMA)


def eval_stage(engine_factory, shop, goals: list[int], params: RolloutParams, *, run: str, iteration: int,
               checkpoint: str, inputs: dict[str, str], split: str = "test", root=None, progress: bool = True,
               force: bool = False, cached_only: bool = False):
    """Greedy episodes (temperature 0) on `goals`; the folder also holds eval.parquet."""
    if not goals:
        raise ValueError(f"eval split {split!r} has no goals")
    return rollout_stage(engine_factory, shop, episode_requests(goals, 1), replace(params, temperature=0.0),
                         run=run, stage="eval", iteration=iteration, checkpoint=checkpoint,
                         inputs={**inputs, "split": split}, root=root, progress=progress, force=force,
                         cached_only=cached_only,
                         extra_tables=lambda rows: {"eval": summarize(rows, iteration, split, checkpoint)})
