"""Eval: one episode per goal of a checkpoint on held-out goals (greedy unless a temperature is given) and their
summary table.

    eval.parquet   iteration, split, goals, temperature, n, score, score_ci, success_rate, success_ci, checkpoint

score (100 x mean reward) and success_rate (reward == 1): the numbers WebShop papers report, with the 95%
intervals of webshop/metrics.py (normal for the score, Wilson for the success rate), as the baselines have.
"""
from __future__ import annotations

import pyarrow as pa

from stages.rollout import RolloutParams, episode_requests, rollout_stage
from stages.shards import merge_stage
from webshop.metrics import score_ci, wilson

EVAL_SCHEMA = pa.schema([
    ("iteration", pa.int32()), ("split", pa.string()), ("goals", pa.string()), ("temperature", pa.float64()),
    ("n", pa.int32()), ("score", pa.float64()),
    ("score_ci", pa.float64()), ("success_rate", pa.float64()), ("success_ci", pa.float64()),
    ("success_centre", pa.float64()), ("checkpoint", pa.string()),
])


def goal_span(goals: list[int]) -> str:
    """`first:last+1` of the evaluated goals (a range of the split, as `apo eval --goals` takes it)."""
    return f"{min(goals)}:{max(goals) + 1}"


def summarize(episode_rows: list[dict], iteration: int | None, split: str, checkpoint: str,
              temperature: float) -> pa.Table:
    rewards = [e["reward"] for e in episode_rows]
    successes = sum(e["success"] for e in episode_rows)
    score, s_ci = score_ci(rewards)
    centre, half = wilson(successes, len(rewards))
    row = {"iteration": iteration, "split": split, "goals": goal_span([e["goal_idx"] for e in episode_rows]),
           "temperature": temperature, "n": len(rewards), "score": score, "score_ci": s_ci,
           "success_rate": successes / len(rewards), "success_ci": half, "success_centre": centre,
           "checkpoint": checkpoint}
    return pa.Table.from_pylist([row], schema=EVAL_SCHEMA)


def eval_stage(engine_factory, shop, goals: list[int], params: RolloutParams, *, run: str, iteration: int | None,
               checkpoint: str, inputs: dict[str, str], split: str = "test", root=None, progress: bool = True,
               force: bool = False, cached_only: bool = False, shard: int | None = None):
    """One episode per goal at `params.temperature` (0: greedy, what the learning curve reports); the folder
    also holds eval.parquet (a `shard`'s does not: its merge, `merge_eval`, does). `iteration` None: an evaluation
    outside a run's iterations (`apo eval`)."""
    if not goals:
        raise ValueError(f"eval split {split!r} has no goals")
    return rollout_stage(engine_factory, shop, episode_requests(goals, 1), params,
                         run=run, stage="eval", iteration=iteration, checkpoint=checkpoint,
                         inputs={**inputs, "split": split}, root=root, progress=progress, force=force,
                         cached_only=cached_only, shard=shard,
                         extra_tables=None if shard is not None else _summary_table(iteration, split, checkpoint,
                                                                                    params.temperature))


def merge_eval(shards, *, run: str, iteration: int | None, checkpoint: str, temperature: float, split: str = "test",
               root=None, force: bool = False, cached_only: bool = False):
    """The eval shards merged into one eval folder, eval.parquet computed over all their episodes."""
    return merge_stage(shards, run=run, stage="eval", iteration=iteration, root=root, force=force,
                       cached_only=cached_only,
                       extra_tables=_summary_table(iteration, split, checkpoint, temperature))


def _summary_table(iteration: int | None, split: str, checkpoint: str, temperature: float):
    return lambda rows: {"eval": summarize(rows, iteration, split, checkpoint, temperature)}
