"""SFT warm start: WebShop's imitation-learning step, on demonstrations of the scripted oracle, and DAgger's
relabelling of a trained policy's own states.

    demos(goals) ──> sft                         the warm start
    relabel(checkpoint, goals) ──> sft           one DAgger round from any checkpoint (`apo relabel`)

`demos_stage` plays `webshop.policies.oracle_policy` on training goals through the rollout loop, so every
demonstration turn carries exactly the prompt ids a rollout of the model would build (same template, history
and token budget), and the oracle's action as the reply. Its folder holds episodes, turns and `weights.parquet`
(weight 1 for every episode that bought the goal's product with reward 1, no row for the others), the same
tables an iteration's training reads, so `sft_stage` is the ordinary training stage with SFT parameters:
weighted SFT with weight 1, no KL, minibatches of episodes, a higher learning rate.

The warm-started checkpoint is then the run's reference model (A*-PO's pi_ref) and its first policy.

A policy trained on the oracle's episodes only ever saw the oracle's states: once it clicks a wrong option, or
re-clicks one it already chose, it is somewhere no demonstration went (the 100-demonstration warm start spent 26
of 27 step-capped test episodes re-clicking one option). `relabel_stage` lets the policy play training goals
greedily and keeps each of its turns on the goal's own item page with the oracle's action as the reply
(`webshop.policies.goal_item_oracle`); `sft_stage` on that folder fine-tunes the policy on the states it
visits, its mistakes among them. DART gets such states into the warm start itself, at no model's cost:
`demos_stage(noise=NoisyOracle(rate))` lets the oracle make option mistakes on the goal's item page and keeps
only its own turns, the recoveries among them.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa

from stages.rollout import RolloutParams, episode_requests, rollout_stage
from stages.train import TrainParams, train_stage
from storage.layout import root_relative
from webshop.policies import NoisyOracle, goal_item_oracle, oracle_policy

DEMO_WEIGHTS_SCHEMA = pa.schema([("episode_id", pa.string()), ("goal_idx", pa.int32()), ("reward", pa.float64()),
                                 ("weight", pa.float64()), ("advantage", pa.float64())])


def unit_weights(episode_rows: list[dict]) -> pa.Table:
    """Weight 1 for each episode: every turn of it is a row to imitate."""
    rows = [{"episode_id": e["episode_id"], "goal_idx": e["goal_idx"], "reward": e["reward"], "weight": 1.0,
             "advantage": 0.0} for e in episode_rows]
    return pa.Table.from_pylist(rows, schema=DEMO_WEIGHTS_SCHEMA)


def demo_weights(episode_rows: list[dict]) -> pa.Table:
    """Weight 1 for each demonstration that succeeded; failed ones (the oracle misses ~5% of goals) get none."""
    return unit_weights([e for e in episode_rows if e["success"]])


def demos_stage(shop, goals: list[int], params: RolloutParams, model: Path, *, run: str, inputs: dict[str, str],
                root=None, force: bool = False, cached_only: bool = False, noise: NoisyOracle | None = None) -> Path:
    """Oracle episodes on `goals` recorded as training rows (episodes, turns, weights) with the prompts of
    `model`'s tokenizer; returns the folder. With `noise` (DART) the noisy oracle plays and its mistakes are not
    rows: the turns are the oracle's labelled ones, its recoveries among them."""
    def engine(_):
        from transformers import AutoTokenizer
        return SimpleNamespace(name="oracle", tokenizer=AutoTokenizer.from_pretrained(model))

    noisy = {} if noise is None else {"noise": f"rate={noise.rate},seed={noise.seed}"}
    return rollout_stage(engine, shop, episode_requests(goals, 1), replace(params, temperature=0.0),
                         run=run, stage="demos", iteration=None, checkpoint="oracle",
                         inputs={**inputs, "tokenizer": root_relative(model, root), **noisy}, root=root,
                         force=force, cached_only=cached_only,
                         demonstrator=oracle_policy if noise is None else noise.act,
                         labeller=None if noise is None else noise.label,
                         extra_tables=lambda rows: {"weights": demo_weights(rows)})


def relabel_stage(engine_factory, shop, goals: list[int], params: RolloutParams, checkpoint: Path, *, run: str,
                  inputs: dict[str, str], root=None, force: bool = False, cached_only: bool = False) -> Path:
    """`checkpoint` plays `goals` greedily (the states its evaluation visits); the folder's turns are its turns
    on the goals' item pages relabelled (the oracle's reply, the policy's action), weight 1 per episode. Returns
    the folder."""
    return rollout_stage(engine_factory, shop, episode_requests(goals, 1), replace(params, temperature=0.0),
                         run=run, stage="relabel", iteration=None, checkpoint=str(checkpoint), inputs=inputs,
                         root=root, force=force, cached_only=cached_only, labeller=goal_item_oracle,
                         extra_tables=lambda rows: {"weights": unit_weights(rows)})


def sft_stage(model: Path, demos: Path, params: TrainParams, *, run: str, root=None, force: bool = False,
              cached_only: bool = False, prompt: dict | None = None, before_training=None) -> Path:
    """Supervised training of `model` on the demonstrations in `demos` (prompts of format `prompt`); returns the
    folder (checkpoint/). `before_training`: see `train_stage`."""
    return train_stage(model, model, demos, demos, params, run=run, iteration=None, root=root, stage="sft",
                       force=force, cached_only=cached_only, prompt=prompt, before_training=before_training)
