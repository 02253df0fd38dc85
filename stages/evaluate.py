"""Eval: greedy episodes of a checkpoint on held-out goals (the test split) and their summary table.

    eval.parquet   iteration, split, n, score, score_ci, success_rate, success_ci, checkpoint

score (100 x mean reward) and success_rate (reward == 1): the numbers WebShop papers report, with the 95%
intervals of webshop/metrics.py (normal for the score, Wilson for the success rate), as the baselines have.
"""
from __future__ import annotations

from dataclasses import replace

import pyarrow as pa

from stages.rollout import RolloutParams, episode_requests, rollout_stage
from webshop.metrics import score_ci, wilson

EVAL_SCHEMA = pa.schema([
    ("iteration", pa.int32()), ("split", pa.string()), ("n", pa.int32()), ("score", pa.float64()),
    ("score_ci", pa.float64()), ("success_rate", pa.float64()), ("success_ci", pa.float64()),
    ("success_centre", pa.float64()), ("checkpoint", pa.string()),
])


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
