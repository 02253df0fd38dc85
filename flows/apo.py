"""Prefect flows: wiring only. Every task body is one call into `stages.pipeline` (plain, tested functions).

    apo         one iteration: [sft] -> rollout + reference -> weights -> train -> eval (deployment
                `apo/iteration`); sft runs once per run, the reference once per block of iterations (cached
                after; never with --v-star-samples 0), so an iteration's own work is rollout -> weights ->
                train -> eval
    apo-train   iteration 0 (the reference model's evaluation and the first reference block), then
                `num_steps` iterations of `apo` as subflows (what `apo train` runs, in ephemeral mode)
    apo-shard   one shard of a sampling stage (deployment `apo-shard/shard`): with `config.shards` > 1 and the
                flow parameter `shard_deployment`, `apo` runs its reference, rollout and eval shards as flow runs
                of it, which any worker of the pool takes (stages exchange data only through the storage root),
                then merges them; without it, the shards are tasks of `apo`'s own run

Tasks run in the order that lets one engine serve consecutive samplers of the same checkpoint: the rollout of
iteration i acts with the checkpoint that iteration i-1's evaluation just loaded, and precedes the reference
block (a new block swaps to the reference model once).

Prefect's result cache is off on purpose: the stages key their outputs by parameters, inputs and code, which
Prefect's cache cannot see (changed files, edited helpers).
"""
from __future__ import annotations

import base64

from prefect import flow, get_run_logger, task
from prefect.deployments import run_deployment
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from stages.config import Config
from stages import pipeline


@task(name="sft", cache_policy=None)
def sft(config: Config, from_stage: str | None) -> str | None:
    return pipeline.run_sft(config, from_stage)


@task(name="sample", task_run_name="{stage}", cache_policy=None)
def sample(config: Config, stage: str, iteration: int, from_stage: str | None, train: str | None = None) -> str:
    return pipeline.run_sampling(config, stage, iteration, from_stage, train)


@task(name="shard", task_run_name="{stage}-shard-{index}", cache_policy=None)
def shard(config: Config, stage: str, iteration: int, index: int, from_stage: str | None,
          train: str | None = None) -> str:
    return pipeline.run_shard(config, stage, iteration, index, from_stage, train)


@task(name="shard-run", task_run_name="{stage}-shard-{index}", cache_policy=None)
def shard_run(deployment: str, config: Config, stage: str, iteration: int, index: int, from_stage: str | None,
              train: str | None = None) -> None:
    """A shard as a flow run of `deployment` (flow `apo-shard`), which any worker of its pool takes."""
    run = run_deployment(deployment, timeout=None, poll_interval=2,
                         parameters=pipeline.shard_parameters(config, stage, iteration, index, from_stage, train))
    if not run.state.is_completed():
        raise RuntimeError(f"{stage} shard {index}: flow run {run.name} ended {run.state.name}")


@task(name="merge", task_run_name="{stage}-merge", cache_policy=None)
def merge(config: Config, stage: str, iteration: int, from_stage: str | None, train: str | None = None) -> str:
    return pipeline.run_merge(config, stage, iteration, from_stage, train)


def sampled(config: Config, stage: str, iteration: int, from_stage: str | None, shard_deployment: str | None,
            train: str | None = None) -> str:
    """A sampling stage: one task, or with config.shards > 1 its shards (tasks here, in turn, sharing this
    process's engine; or flow runs of `shard_deployment`, all at once, on whichever workers take them) and then
    their merge."""
    if config.shards == 1:
        return sample(config, stage, iteration, from_stage, train)
    n = pipeline.shard_count(config, stage, iteration, train)
    if shard_deployment:  # all submitted first: the flow runs wait for workers together
        for future in [shard_run.submit(shard_deployment, config, stage, iteration, s, from_stage, train)
                       for s in range(n)]:
            future.result()
    else:
        for s in range(n):
            shard(config, stage, iteration, s, from_stage, train)
    return merge(config, stage, iteration, from_stage, train)


@task(name="weights", cache_policy=None)
def weights(config: Config, iteration: int, reference_dir: str | None, rollout_dir: str,
            from_stage: str | None) -> str:
    return pipeline.run_weights(config, iteration, reference_dir, rollout_dir, from_stage)


@task(name="train", cache_policy=None)
def train(config: Config, iteration: int, weights_dir: str, rollout_dir: str, from_stage: str | None) -> str:
    return pipeline.run_train(config, iteration, weights_dir, rollout_dir, from_stage)


@flow(name="apo")
def apo(config: Config | None = None, iteration: int | None = None, from_stage: str | None = None,
        shard_deployment: str | None = None) -> dict:
    """One A*-PO iteration. `iteration` defaults to the next one (the last done one when replaying with
    `from_stage`); `from_stage` in sft|reference|rollout|weights|train|eval re-runs that stage and the ones
    after it in that order. `shard_deployment` (e.g. "apo-shard/shard"): with config.shards > 1, each shard of a
    sampling stage is a flow run of that deployment, taken by any worker of its pool."""
    config = config or Config()
    config.check()
    with pipeline.run_writer(config):
        pipeline.check_run_config(config)
        i = pipeline.resolve_iteration(config, iteration, from_stage)
        warm = sft(config, from_stage)
        ro = sampled(config, "rollout", i, from_stage, shard_deployment)
        ref = sampled(config, "reference", i, from_stage, shard_deployment) if config.v_star_samples else None
        w = weights(config, i, ref, ro, from_stage)
        tr = train(config, i, w, ro, from_stage)
        ev = sampled(config, "eval", i, from_stage, shard_deployment, tr) if pipeline.eval_due(config, i) else None
        record = pipeline.record_iteration(config, i, {"sft": warm, "reference": ref, "rollout": ro,
                                                       "weights": w, "train": tr, "eval": ev})
        publish(config, record)
    get_run_logger().info("iteration %d done: checkpoint %s", i, record["checkpoint"])
    return record


@flow(name="apo-shard")
def apo_shard(config: Config, stage: str, iteration: int, index: int, from_stage: str | None = None,
              train: str | None = None) -> str:
    """One shard of a sampling stage as a flow run of its own (deployment `apo-shard/shard`): the worker that takes
    it needs only the storage root, where it finds the run's records, checkpoints and catalogue and publishes the
    shard (the iteration's flow run merges the shards from there)."""
    config.check()
    pipeline.check_run_config(config)
    try:
        return pipeline.run_shard(config, stage, iteration, index, from_stage, train)
    finally:
        pipeline.release_engine()


def publish(config: Config, record: dict) -> None:
    """The iteration's artifacts: the run's metrics table, three sample episodes, the learning curve."""
    key = pipeline.artifact_key(config)
    create_table_artifact(key=f"{key}-metrics", table=pipeline.run_metrics(config),
                          description=f"run {config.run}: one row per iteration")
    create_markdown_artifact(key=f"{key}-episodes", markdown=pipeline.sample_episodes(record),
                             description=f"run {config.run}, iteration {record['iteration']}: sample episodes")
    if record.get("eval"):
        png = pipeline.learning_curve(config).read_bytes()
        create_markdown_artifact(key=f"{key}-curve", description=f"run {config.run}: learning curve",
                                 markdown=f"![learning curve](data:image/png;base64,{base64.b64encode(png).decode()})")


@flow(name="apo-start")
def start(config: Config) -> dict:
    """Iteration 0: the warm start (if any) and the reference model's evaluation, where the curve starts; then,
    with the reference model still loaded, the first reference block."""
    warm = sft(config, None)
    ev = sampled(config, "eval", 0, None, None)
    if config.num_steps and config.v_star_samples:
        sampled(config, "reference", 1, None, None)
    record = pipeline.record_iteration(config, 0, {"sft": warm, "eval": ev})
    publish(config, record)
    return record


@flow(name="apo-train")
def apo_train(config: Config | None = None) -> list[dict]:
    """Iterations from the last completed one up to num_steps; an interrupted run resumes where it stopped
    (each stage reuses its cached output, so no row is written twice)."""
    config = config or Config()
    config.check()
    with pipeline.run_writer(config):
        pipeline.check_run_config(config)
        if pipeline.iteration_record(config, 0) is None:
            start(config)
        records = []
        for i in range(pipeline.last_iteration(config) + 1, config.num_steps + 1):
            records.append(apo(config, i))
        pipeline.release_engine()
    return records
