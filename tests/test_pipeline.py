"""One A*-PO iteration end to end through Prefect (test harness: a temporary Prefect API and database) on a tiny
random model of the embedded model's architecture and tokenizer (the mechanics, not the learning: that is
bench/learning's) and the generated catalogue; replays that re-run only what changed; the SQL catalogue; reference
blocks; one engine per checkpoint."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from stages.config import Config
from storage.catalog import query
from storage.parquet import read_table
from storage.tables import EPISODES_SCHEMA, TURNS_SCHEMA


@pytest.fixture(scope="module")
def prefect():
    from prefect.testing.utilities import prefect_test_harness

    # 120 s, as `apo` gives its ephemeral server: the harness's 30 s default times out on 2 busy cores
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="module")
def config(tiny_model, tmp_path_factory):
    return Config(model=str(tiny_model), engine="hf", run="t", output_dir=str(tmp_path_factory.mktemp("home")),
                  num_steps=1, batch_size=1, rollout_samples=2, v_star_samples=2, max_episode_steps=2,
                  eval_goals=1, max_new_tokens=8, history_turns=1, micro_batch_size=4, dtype="float32")


@pytest.fixture(scope="module")
def first(prefect, config):
    from flows.apo import apo

    return apo(config, 1)


def _mtime(folder: str, name: str = "manifest.json") -> int:
    return (Path(folder) / name).stat().st_mtime_ns


def test_iteration_writes_every_table_and_a_loadable_checkpoint(first, config):
    for stage in ("reference", "rollout", "eval"):
        assert read_table(Path(first[stage]) / "episodes.parquet").schema.equals(EPISODES_SCHEMA)
        assert read_table(Path(first[stage]) / "turns.parquet").schema.equals(TURNS_SCHEMA)
    ref = read_table(Path(first["reference"]) / "episodes.parquet")
    assert ref.num_rows == config.batch_size * config.v_star_samples
    rollout = read_table(Path(first["rollout"]) / "episodes.parquet")
    assert rollout.num_rows == config.batch_size * config.rollout_samples
    weights = read_table(Path(first["weights"]) / "weights.parquet")
    assert sorted(weights["episode_id"].to_pylist()) == sorted(rollout["episode_id"].to_pylist())
    assert all(0.1 <= w <= 5.0 for w in weights["weight"].to_pylist())
    for name in ("v_star.parquet", "diagnostics.parquet"):
        assert (Path(first["weights"]) / name).is_file()
    metrics = read_table(Path(first["train"]) / "train_metrics.parquet").to_pylist()
    assert len(metrics) == 1 and metrics[0]["step"] == 1 and metrics[0]["tokens_per_s"] > 0
    evaluation = read_table(Path(first["eval"]) / "eval.parquet").to_pylist()
    assert evaluation[0]["n"] == config.eval_goals and evaluation[0]["iteration"] == 1

    from transformers import AutoModelForCausalLM, AutoTokenizer
    from policy.engines import HFEngine, Sampling

    checkpoint = Path(first["checkpoint"])
    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    assert model.config.vocab_size == AutoTokenizer.from_pretrained(checkpoint).vocab_size or model is not None
    engine = HFEngine(checkpoint)
    [c] = engine.generate([engine.tokenizer.encode("search[")], Sampling(temperature=0, max_new_tokens=4))
    assert c.token_ids and c.text == engine.tokenizer.decode(c.token_ids, skip_special_tokens=True)


def test_catalogue_views_show_the_run(first, config):
    columns, rows = query("SELECT stage, count(*) FROM episodes GROUP BY stage ORDER BY stage", config.output_dir)
    counts = dict(rows)
    assert counts == {"eval": config.eval_goals, "reference": config.batch_size * config.v_star_samples,
                      "rollout": config.batch_size * config.rollout_samples}
    _, [(steps,)] = query("SELECT count(*) FROM train_metrics WHERE run = 't' AND iteration = 1", config.output_dir)
    assert steps == 1
    _, [(n_turns,)] = query("SELECT count(*) FROM turns", config.output_dir)
    _, [(n_steps,)] = query("SELECT sum(n_steps) FROM episodes", config.output_dir)
    assert n_turns == n_steps
    with pytest.raises(ValueError, match="sql"):
        query("SELECT nope FROM episodes", config.output_dir)


def test_changed_training_parameter_reruns_only_training(first, config):
    from flows.apo import apo

    before = {s: _mtime(first[s]) for s in ("reference", "rollout", "weights")}
    second = apo(replace(config, learning_rate=1e-5), 1)
    assert {s: second[s] for s in before} == {s: first[s] for s in before}
    assert {s: _mtime(second[s]) for s in before} == before        # not rewritten
    assert second["train"] != first["train"]                          # a new train key beside the old one
    assert Path(first["train"], "manifest.json").is_file()           # nothing overwritten


def test_changed_beta_reruns_weights_and_training_only(first, config):
    from flows.apo import apo

    before = {s: _mtime(first[s]) for s in ("reference", "rollout")}
    third = apo(replace(config, beta=0.25), 1)
    assert {s: _mtime(third[s]) for s in before} == before
    assert third["weights"] != first["weights"] and third["train"] != first["train"]
    assert json.loads(Path(third["weights"], "manifest.json").read_text())["params"]["beta"] == 0.25


def test_from_stage_train_recomputes_training_without_rollout(first, config):
    from flows.apo import apo

    rollout_files = {n: _mtime(first["rollout"], n) for n in ("episodes.parquet", "turns.parquet", "manifest.json")}
    train_before = _mtime(first["train"])
    replayed = apo(config, 1, "train")
    assert replayed["rollout"] == first["rollout"] and replayed["train"] == first["train"]
    assert {n: _mtime(first["rollout"], n) for n in rollout_files} == rollout_files
    assert _mtime(first["train"]) > train_before                     # training ran again, in place


def test_from_stage_needs_the_earlier_stages_cached(prefect, config):
    from flows.apo import apo

    other = replace(config, run="fresh")
    with pytest.raises(ValueError, match="not cached"):
        apo(other, 1, "train")


@pytest.mark.parametrize("change", [{"batch_size": 2}, {"observation_mode": "compact"}, {"history_turns": 3}])
def test_run_identity_cannot_change(first, config, change):
    from flows.apo import apo

    # The prompt format too: a run resumed in another would pair its recorded iterations with the new format's.
    field = next(iter(change))
    with pytest.raises(ValueError, match=f"was started with {field}="):
        apo(replace(config, **change), 2)


# ---------------------------------------------------------------------------------------------------------
# the warm start, iteration 0, a second objective on the same reference, artifacts

@pytest.fixture(scope="module")
def warm(prefect, config):
    """(config, iteration records, checkpoints the engine loaded) of a warm-started run of one iteration."""
    from flows.apo import apo_train
    from stages import pipeline

    # 8 steps: the oracle needs search, click, options and buy; 48-token replies: room for its searches (the
    # demonstrations stage refuses an action longer than the reply budget).
    warm_config = replace(config, run="warm", sft_demos=2, sft_epochs=1, sft_batch_episodes=1, max_episode_steps=8,
                          history_turns=0, max_new_tokens=48)
    loads = len(pipeline.ENGINE_LOADS)
    return warm_config, apo_train(warm_config), pipeline.ENGINE_LOADS[loads:]


def test_warm_start_is_the_reference_and_the_first_policy(warm):
    from stages import pipeline

    config, records, loads = warm
    assert [r["iteration"] for r in records] == [1]
    start = pipeline.iteration_record(config, 0)
    sft_checkpoint = str(Path(start["sft"]) / "checkpoint")
    assert start["checkpoint"] == sft_checkpoint and records[0]["sft"] == start["sft"]
    # one engine load of the warm start serves iteration 0's evaluation, the reference samples and rollout 1
    # (the sft task that opens each iteration leaves it loaded); then the trained checkpoint's for its evaluation
    assert loads == [sft_checkpoint, records[0]["checkpoint"]], loads
    assert Path(start["sft"]).parent == Path(config.output_dir) / "runs" / "warm" / "sft"
    for stage in ("reference", "rollout"):  # both act with the warm-started model in iteration 1
        assert set(read_table(Path(records[0][stage]) / "episodes.parquet")["checkpoint"].to_pylist()) == \
            {sft_checkpoint}
    state = json.loads((Path(records[0]["train"]) / "manifest.json").read_text())
    assert state["inputs"]["reference"] == str(Path(sft_checkpoint).relative_to(config.output_dir))  # as keyed
    # iteration 0 evaluated the warm start; the catalogue shows the curve's two points for this run
    evaluation = read_table(Path(start["eval"]) / "eval.parquet").to_pylist()
    assert evaluation[0]["iteration"] == 0 and evaluation[0]["checkpoint"] == sft_checkpoint
    _, rows = query("SELECT iteration FROM eval WHERE run = 'warm' ORDER BY iteration", config.output_dir)
    assert rows == [(0,), (1,)]


def test_second_objective_shares_warm_start_and_reference(warm):
    from flows.apo import apo_train
    from stages import pipeline

    config, records, _ = warm
    shared = {s: _mtime(records[0][s]) for s in ("sft", "reference")}
    other = replace(config, run="warm-apo", objective="apo", reference_run="warm")
    [record] = apo_train(other)
    assert record["sft"] == records[0]["sft"] and record["reference"] == records[0]["reference"]
    assert {s: _mtime(record[s]) for s in shared} == shared                 # reused, not recomputed
    assert pipeline.iteration_record(other, 0)["eval"] == pipeline.iteration_record(config, 0)["eval"]
    assert record["rollout"] != records[0]["rollout"] and record["train"] != records[0]["train"]
    assert json.loads((Path(record["train"]) / "manifest.json").read_text())["params"]["objective"] == "apo"
    with pytest.raises(ValueError, match="reference run 'nope' has not started"):
        apo_train(replace(other, run="warm-x", reference_run="nope"))
    # another warm start cannot share this one's reference: refused before a second warm start is built in it
    warm_starts = sorted((Path(records[0]["sft"]).parent).iterdir())
    with pytest.raises(ValueError, match=r"reference run 'warm' differs in sft_demo_noise \(0.0 vs 0.3\)"):
        apo_train(replace(other, run="warm-noisy", sft_demo_noise=0.3))
    assert sorted((Path(records[0]["sft"]).parent).iterdir()) == warm_starts


def test_iterations_publish_artifacts(warm):
    from prefect.artifacts import Artifact

    from stages import pipeline

    config, records, _ = warm
    key = pipeline.artifact_key(config)
    metrics = Artifact.get(f"{key}-metrics")
    assert metrics is not None and metrics.type == "table"
    rows = json.loads(metrics.data)
    assert [r["iteration"] for r in rows] == [0, 1] and rows[1]["train_tokens_per_s"] > 0
    episodes = Artifact.get(f"{key}-episodes")
    assert episodes.type == "markdown" and records[0]["rollout"] in episodes.data and "reward" in episodes.data
    curve = Artifact.get(f"{key}-curve")
    assert curve.data.startswith("![learning curve](data:image/png;base64,iVBORw0KGgo")  # a PNG
    assert (pipeline.run_dir(config) / "learning_curve.png").read_bytes()[:4] == b"\x89PNG"


def test_num_steps_zero_runs_only_iteration_zero(prefect, config):
    from flows.apo import apo_train
    from stages import pipeline

    base = replace(config, run="base-only", num_steps=0)
    assert apo_train(base) == []
    record = pipeline.iteration_record(base, 0)
    assert record["sft"] is None and record["checkpoint"] == str(pipeline.base_model(base))
    assert read_table(Path(record["eval"]) / "eval.parquet")["iteration"].to_pylist() == [0]


def test_without_a_reference_pass_the_iteration_samples_no_reference(prefect, config):
    """--v-star-samples 0 (weighted-sft, goal-normalised advantages: V* cancels): iteration 0 and 1 run no
    reference stage; the weights take V* = 0."""
    from flows.apo import apo_train
    from stages import pipeline

    no_ref = replace(config, run="no-reference", v_star_samples=0, adv_norm="goal")
    [record] = apo_train(no_ref)
    assert record["reference"] is None and record["train"]
    assert not (Path(no_ref.output_dir) / "runs" / "no-reference" / "reference").exists()
    v_star = read_table(Path(record["weights"]) / "v_star.parquet")
    assert v_star["v_star"].to_pylist() == [0.0] * no_ref.batch_size
    weights = read_table(Path(record["weights"]) / "weights.parquet")
    assert weights.num_rows == no_ref.batch_size * no_ref.rollout_samples
    assert pipeline.iteration_record(no_ref, 1)["reference"] is None


# ---------------------------------------------------------------------------------------------------------
# Sharded sampling stages (issue 14): shards as tasks of the iteration's own run; tests/test_remote.py runs them
# on two Prefect workers

def test_sharded_stages_are_merged_in_shard_order_and_read_as_one(prefect, config):
    """shards=2: the reference, rollout and eval stages each play their goals in two shards (stages of their
    own, under `<stage>-shards/`, goals cut in request order); the folder the iteration records holds their rows in
    shard order, eval's summary is over all of them, and the weights cover every merged episode. A second call
    reuses every shard and merge. A shard whose table is damaged is one line naming it when the merge is
    recomputed, and the merged folder already there stays whole."""
    from flows.apo import apo
    from stages.pipeline import run_merge

    sharded = replace(config, run="t-sharded", shards=2, batch_size=2, eval_goals=3)
    record = apo(sharded, 1)
    for stage, n in (("reference", 4), ("rollout", 4), ("eval", 3)):
        manifest = json.loads((Path(record[stage]) / "manifest.json").read_text())
        shards = [Path(p) for p in manifest["inputs"]["shards"]]
        assert [p.parent.name for p in shards] == [f"{stage}-shards"] * 2 and manifest["summary"]["shards"] == 2
        for name in ("episodes.parquet", "turns.parquet"):
            merged = read_table(Path(record[stage]) / name)
            assert merged.schema.equals(EPISODES_SCHEMA if name == "episodes.parquet" else TURNS_SCHEMA)
            assert merged.to_pylist() == [row for p in shards for row in read_table(p / name).to_pylist()]
        goals = [set(read_table(p / "episodes.parquet")["goal_idx"].to_pylist()) for p in shards]
        assert len(goals[0]) + len(goals[1]) == len(goals[0] | goals[1]) and manifest["summary"]["episodes"] == n
    assert read_table(Path(record["eval"]) / "eval.parquet").to_pylist()[0]["n"] == 3
    rollout_ids = read_table(Path(record["rollout"]) / "episodes.parquet")["episode_id"].to_pylist()
    weighted = read_table(Path(record["weights"]) / "weights.parquet")["episode_id"].to_pylist()
    assert sorted(weighted) == sorted(rollout_ids)

    published = {stage: _mtime(record[stage]) for stage in ("reference", "rollout", "eval")}
    again = apo(sharded, 1)
    assert {stage: _mtime(again[stage]) for stage in published} == published

    shard = Path(json.loads((Path(record["rollout"]) / "manifest.json").read_text())["inputs"]["shards"][1])
    (shard / "turns.parquet").write_bytes(b"PAR1 cut short")
    with pytest.raises(ValueError) as e:
        run_merge(sharded, "rollout", 1, from_stage="rollout")
    assert len(str(e.value).splitlines()) == 1 and str(shard) in str(e.value)
    assert _mtime(record["rollout"]) == published["rollout"]
    assert read_table(Path(record["rollout"]) / "turns.parquet").num_rows > 0


# ---------------------------------------------------------------------------------------------------------
# A*-PO stage 1 once per block of iterations; one engine per checkpoint

def test_reference_block_is_sampled_once_for_its_iterations(prefect, config):
    from flows.apo import apo_train
    from stages import pipeline

    blocked = replace(config, run="block", num_steps=3, reference_block=2, eval_frequency=1)
    records = apo_train(blocked)
    goals = [pipeline.goal_batch(blocked, i) for i in (1, 2, 3)]
    assert records[0]["reference"] == records[1]["reference"] != records[2]["reference"]
    first_block = read_table(Path(records[0]["reference"]) / "episodes.parquet").to_pylist()
    assert sorted((e["goal_idx"], e["sample_idx"]) for e in first_block) == sorted(
        (g, s) for g in goals[0] + goals[1] for s in range(blocked.v_star_samples))
    for record, batch in zip(records, goals):  # V* and its diagnostics are of the iteration's own goals
        assert read_table(Path(record["weights"]) / "v_star.parquet")["goal_idx"].to_pylist() == sorted(batch)
    # engines: the reference model serves iteration 0's eval, the first block and rollout 1; then each new
    # checkpoint serves its evaluation and the next rollout, and the second block swaps to pi_ref once
    checkpoints = [str(pipeline.reference_model(blocked))] + [r["checkpoint"] for r in records]
    loads = pipeline.ENGINE_LOADS[-5:]
    assert loads == [checkpoints[0], checkpoints[1], checkpoints[2], checkpoints[0], checkpoints[3]], loads


def test_a_new_checkpoint_gets_an_engine_that_samples_from_it(config, tiny_model, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from conftest import tiny_random_model
    from policy.engines import Sampling
    from stages import pipeline

    other = tiny_random_model(tiny_model, tmp_path / "tiny-1", seed=1)
    factory = pipeline.engine_for(config)
    prompt = factory(str(tiny_model)).tokenizer.encode("Instruction: buy a red shirt")
    sampled = {}
    for checkpoint in (tiny_model, other):
        [c] = factory(str(checkpoint)).generate([prompt], Sampling(temperature=0, max_new_tokens=6))
        sampled[checkpoint] = c
    pipeline.release_engine()

    def teacher_forced(checkpoint, c):
        model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
        with torch.no_grad():
            logits = model(torch.tensor([prompt + c.token_ids])).logits[0].log_softmax(-1)
        return torch.tensor([logits[len(prompt) - 1 + i, t] for i, t in enumerate(c.token_ids)])

    new = torch.tensor(sampled[other].logprobs)
    assert (new - teacher_forced(other, sampled[other])).abs().max() < 1e-3     # the new weights' log-probs
    assert (new - teacher_forced(tiny_model, sampled[other])).abs().max() > 0.5  # not the old ones'
    assert sampled[other].token_ids != sampled[tiny_model].token_ids


def _cli_flags(config: Config) -> list[str]:
    keep = ("model", "engine", "run", "output_dir", "max_episode_steps", "max_new_tokens", "history_turns", "dtype")
    return [a for k in keep for a in ("--" + k.replace("_", "-"), str(getattr(config, k)))]


def test_a_checkpoint_is_sampled_only_with_the_prompt_format_it_learned(first, warm, config, capsys):
    """Its train stage records the prompt format of its data in the checkpoint (the warm start's too); an
    evaluation with another observation mode stops with one line, before an engine loads it."""
    from apo.cli import main
    from stages import pipeline
    from stages.rollout import PROMPT_RECORD

    checkpoint = Path(first["checkpoint"])
    assert json.loads((checkpoint / PROMPT_RECORD).read_text()) == {"observation_mode": "text", "history_turns": 1}
    warm_config, records, _ = warm
    assert json.loads((Path(records[0]["sft"]) / "checkpoint" / PROMPT_RECORD).read_text()) == \
        {"observation_mode": "text", "history_turns": 0}
    loads = len(pipeline.ENGINE_LOADS)
    flags = [a if a != config.run else "t-compact" for a in _cli_flags(config)]
    assert main(["eval", *flags, "--checkpoint", str(checkpoint), "--observation-mode", "compact"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"apo eval: error: {checkpoint} was trained on text prompts with history 1, not compact with history 1: "
        "pass --observation-mode text --history-turns 1")
    assert len(pipeline.ENGINE_LOADS) == loads


def test_apo_eval_scores_any_checkpoint_on_a_goal_range(first, config, capsys):
    """`apo eval`: the run's iteration 1 on test goals 2:5, greedy by default; one JSON line whose numbers are
    those of the episodes it wrote; the same call again reuses them; a sampled evaluation is another one."""
    from apo.cli import main
    from webshop.metrics import score_ci, wilson

    assert main(["eval", *_cli_flags(config), "--iteration", "1", "--goals", "2:5"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (out["checkpoint"], out["split"], out["goals"], out["temperature"], out["n"]) == (
        first["checkpoint"], "test", "2:5", 0.0, 3)
    episodes = read_table(Path(out["folder"]) / "episodes.parquet").to_pylist()
    assert sorted(e["goal_idx"] for e in episodes) == [2, 3, 4]
    rewards = [e["reward"] for e in episodes]
    assert (out["score"], out["score_ci"]) == pytest.approx(score_ci(rewards))
    assert out["success_rate"] == sum(e["success"] for e in episodes) / 3
    assert out["success_ci"] == pytest.approx(wilson(sum(e["success"] for e in episodes), 3)[1])
    assert Path(out["folder"]).parent.parent.name == "iter=0001"
    mtime = _mtime(out["folder"])
    assert main(["eval", *_cli_flags(config), "--iteration", "1", "--goals", "2:5"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["folder"] == out["folder"]
    assert _mtime(out["folder"]) == mtime

    # the base model (no run iteration) sampled on the eval split: a folder of the run outside its iterations
    from stages.pipeline import shop
    first_eval = list(shop(config).goals.split("eval"))[0]  # the generated catalogue's splits are scaled down
    span = f"{first_eval}:{first_eval + 2}"
    assert main(["eval", *_cli_flags(config), "--split", "eval", "--goals", span, "--temperature", "1.0"]) == 0
    sampled = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (sampled["checkpoint"], sampled["split"], sampled["temperature"], sampled["n"]) == (
        config.model, "eval", 1.0, 2)
    assert Path(sampled["folder"]).parent == Path(config.output_dir) / "runs" / config.run / "eval"
    columns, rows = query("SELECT goals, temperature, n FROM evaluations ORDER BY goals", config.output_dir)
    assert ("2:5", 0.0, 3) in rows and (span, 1.0, 2) in rows
    # goal by goal: both evaluations' episodes and turns, as their folders hold them
    _, rows = query("SELECT episode_id, goal_idx, reward FROM evaluation_episodes", config.output_dir)
    _, turns = query("SELECT episode_id, turn, action FROM evaluation_turns", config.output_dir)
    for folder in (out["folder"], sampled["folder"]):
        written = read_table(Path(folder) / "episodes.parquet").to_pylist()
        assert {(e["episode_id"], e["goal_idx"], e["reward"]) for e in written} <= set(rows)
        assert {(t["episode_id"], t["turn"], t["action"])
                for t in read_table(Path(folder) / "turns.parquet").to_pylist()} <= set(turns)

    for flags, words in [(["--goals", "600:700"], ["600:700", "test split"]),
                         (["--iteration", "9"], ["iteration 9 is not done"]),
                         (["--iteration", "1", "--checkpoint", config.model], ["not both"]),
                         (["--checkpoint", "/no/such/model"], ["/no/such/model"])]:
        assert main(["eval", *_cli_flags(config), *flags]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and all(w in err for w in words), err


def test_apo_relabel_plays_training_goals_away_from_demonstrations_and_batches(first, config, capsys):
    """`apo relabel` plays the goals just before the demonstrations' (none of an iteration's batch); a policy
    the oracle has nothing to correct on them is one line, after the relabel stage is written and nothing else."""
    from apo.cli import main
    from stages.pipeline import demo_goals, goal_batch, relabel_goals, training_goals

    with_demos = replace(config, sft_demos=5)
    played = relabel_goals(with_demos, 3)
    train = training_goals(with_demos)
    assert played == train[-8:-5] and not set(played) & set(demo_goals(with_demos))
    assert not set(played) & {g for i in range(1, 4) for g in goal_batch(with_demos, i)}
    with pytest.raises(ValueError, match=f"--num-goals {len(train)}: only {len(train) - 5} training goals"):
        relabel_goals(with_demos, len(train))

    # the tiny random model never reaches a goal's item page: nothing to correct, said in one line
    assert main(["relabel", *_cli_flags(config), "--iteration", "1", "--num-goals", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the episodes' progress bar
    assert err.startswith("apo relabel: error: ") and err.endswith("nothing to train on") and \
        first["checkpoint"] in err, err
    [relabelled] = (Path(config.output_dir) / "runs" / config.run / "relabel").iterdir()
    manifest = json.loads((relabelled / "manifest.json").read_text())
    assert manifest["summary"]["episodes"] == 2 and manifest["summary"]["turns"] == 0
    assert sorted(e["goal_idx"] for e in read_table(relabelled / "episodes.parquet").to_pylist()) == \
        sorted(relabel_goals(config, 2))
    assert not (Path(config.output_dir) / "runs" / config.run / "sft").exists()


def test_a_copied_root_and_another_spelling_of_it_read_as_the_original(first, config, tmp_path, monkeypatch):
    """Records store paths relative to the root and stage keys do not depend on how the root is spelled: a copy
    of the root reads its own files (it read the original's), continues from its own checkpoint (a moved root
    claimed it 'was pruned'), and the same root given as a relative path reuses every cached stage (issue 13)."""
    import shutil

    from stages.pipeline import iteration_record, policy_checkpoint, run_sampling

    stored = json.loads((Path(config.output_dir) / "runs" / config.run / "iter=0001" / "iteration.json").read_text())
    assert not Path(stored["rollout"]).is_absolute() and not Path(stored["checkpoint"]).is_absolute()

    copy = tmp_path / "copy"
    shutil.copytree(config.output_dir, copy)
    moved = replace(config, output_dir=str(copy))
    assert Path(iteration_record(moved, 1)["rollout"]).is_relative_to(copy)
    assert policy_checkpoint(moved, 2).is_relative_to(copy) and (policy_checkpoint(moved, 2) / "config.json").is_file()
    count = f"SELECT count(*) FROM eval WHERE run = '{config.run}'"
    before = query(count, config.output_dir)[1][0][0]
    assert query(count, copy)[1][0][0] == before >= 1
    (Path(iteration_record(moved, 1)["eval"]) / "eval.parquet").unlink()  # the copy loses iteration 1's evaluation
    assert query(count, copy)[1][0][0] == before - 1
    assert query(count, config.output_dir)[1][0][0] == before  # the original keeps its own

    monkeypatch.chdir(copy.parent)
    relative = replace(config, output_dir="copy")
    mtime = _mtime(iteration_record(moved, 1)["rollout"])
    assert Path(run_sampling(relative, "rollout", 1)).resolve() == Path(iteration_record(moved, 1)["rollout"]).resolve()
    assert _mtime(iteration_record(moved, 1)["rollout"]) == mtime  # reused, not sampled again

    # a train folder whose manifest is gone is noticed before its checkpoint is trusted (it went unnoticed)
    (Path(iteration_record(moved, 1)["train"]) / "manifest.json").unlink()
    with pytest.raises(ValueError, match="iteration 1 .* has lost its manifest.json: replay it with --iteration 1 "
                                         "--from-stage train"):
        policy_checkpoint(moved, 2)


def test_a_relative_root_evaluates_the_checkpoint_its_train_stage_wrote(first, config, tmp_path, monkeypatch):
    """With the root given relative (./storage_root, the default, is), the train folder the flow hands to its eval
    task was read as a root-relative record path and the root put in front of it a second time: every iteration's
    evaluation failed ('Repo id must be in the form ...') after training (found by a learning run)."""
    import shutil

    from flows.apo import apo
    from stages.report import eval_row

    shutil.copytree(config.output_dir, tmp_path / "rel")
    monkeypatch.chdir(tmp_path)
    record = apo(replace(config, output_dir="rel"), 1, "eval")  # every stage cached but the evaluation
    assert Path(record["eval"]).resolve().is_relative_to((tmp_path / "rel").resolve())
    again, before = eval_row(record["eval"]), eval_row(first["eval"])
    assert again["n"] == before["n"] == config.eval_goals and again["score"] == before["score"]  # greedy, same model


def test_a_damaged_earlier_evaluation_does_not_fail_the_report(first, config, tmp_path, caplog):
    """A corrupt earlier eval.parquet crashed `apo iteration` after it had done its work, while publishing the
    artifacts (issue 13): the report leaves it out, with a warning naming it."""
    import logging
    import shutil

    from stages.pipeline import iteration_record, learning_curve, run_metrics

    copy = tmp_path / "copy"
    shutil.copytree(config.output_dir, copy)
    damaged = replace(config, output_dir=str(copy))
    table = Path(iteration_record(damaged, 1)["eval"]) / "eval.parquet"
    table.write_bytes(table.read_bytes()[:40])
    with caplog.at_level(logging.WARNING, logger="stages.report"):
        rows = run_metrics(damaged)
        assert learning_curve(damaged).is_file()
    assert [r["iteration"] for r in rows] == [1] and "eval_score" not in rows[0]
    assert f"left out of the report: {table}: not a readable eval table" in caplog.text
    with pytest.raises(ValueError, match="not a readable eval table"):  # where the number itself is asked for
        from stages.report import eval_row
        eval_row(str(table.parent))
