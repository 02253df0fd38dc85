"""The rollout loop and its stage: exact ids on disk, faithful records, skip-if-done, atomic outputs.

One real reference stage (SmolLM2-135M through the HF engine, 2 goals x 2 samples, 2 steps) is run once per
module and read back by several tests; the other stages are cheap: a context-limited budget never calls the
engine, and the failure-injection wrapper stops after one real call.
"""
from __future__ import annotations

import dataclasses
import logging
import math

import numpy as np
import pyarrow as pa
import pytest

from policy.prompts import Turn, encode_prompt, parse_action
from stages.rollout import RolloutParams, episode_requests, reference_samples, rollout_stage, run_episodes
from storage.parquet import read_table, write_table
from storage.stages import read_manifest, stage_output
from storage.tables import EPISODES_SCHEMA, TURNS_SCHEMA, to_table
from webshop.env import Episode

PARAMS = RolloutParams(temperature=0.9, top_p=1.0, max_new_tokens=10, max_episode_steps=2, history_turns=2,
                       max_prompt_tokens=1536, seed=0)
REQUESTS = episode_requests([0, 1], 2)
INPUTS = {"catalogue": "generated-300-seed0", "goals": "synthetic-seed0"}
RUN = "test-run"
END_REASONS = {"bought", "step_cap", "context", "engine_error"}


class Abort(BaseException):
    """An interrupt-like failure (not an Exception): must not be swallowed as an engine error."""


class WrappedEngine:
    """The real engine, counting calls; `fail_on=n` makes the n-th generate raise instead of generating (an
    engine running out of KV cache), with `error` as the exception class."""

    def __init__(self, engine, fail_on: int | None = None, error: type[BaseException] = RuntimeError):
        self.engine, self.fail_on, self.error = engine, fail_on, error
        self.tokenizer, self.name = engine.tokenizer, engine.name
        self.calls = 0

    def generate(self, prompts, sampling):
        self.calls += 1
        if self.calls == self.fail_on:
            raise self.error("out of KV cache blocks\nsecond line")
        return self.engine.generate(prompts, sampling)


def no_factory(checkpoint):
    pytest.fail(f"engine factory called for {checkpoint!r}: the stage should have been skipped")


def by_episode(turns_table) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for row in turns_table.to_pylist():
        out.setdefault(row["episode_id"], []).append(row)
    for rows in out.values():
        rows.sort(key=lambda r: r["turn"])
    return out


def first_prompt(tokenizer, shop, goal_idx) -> list[int]:
    ep = Episode(shop, goal_idx)
    return encode_prompt(tokenizer, Turn.of(ep), [], PARAMS.prompt())


def read_stage(folder):
    return read_table(folder / "episodes.parquet"), read_table(folder / "turns.parquet")


def leftovers(root) -> list:
    return [p for p in root.rglob("*") if p.name.startswith(".tmp-")]


# ---------------------------------------------------------------------------------------------------------
# the reference stage, run once
# ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reference(hf_engine, generated_shop, embedded_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("rollout-root")
    checkpoint = str(embedded_model)
    asked = []

    def factory(ckpt):
        asked.append(ckpt)
        return WrappedEngine(hf_engine)

    folder = rollout_stage(factory, generated_shop, REQUESTS, PARAMS, run=RUN, stage="reference", iteration=None,
                           checkpoint=checkpoint, inputs=INPUTS, root=root, progress=False)
    episodes, turns = read_stage(folder)
    return {"root": root, "folder": folder, "checkpoint": checkpoint, "asked": asked, "episodes": episodes,
            "turns": turns, "manifest": read_manifest(folder)}


def test_reference_stage_tables(reference):
    folder, root, episodes, turns = reference["folder"], reference["root"], reference["episodes"], reference["turns"]
    assert reference["asked"] == [reference["checkpoint"]]  # one engine, made for the stage's checkpoint
    assert folder.parent == root / "runs" / RUN / "reference"
    assert sorted(p.name for p in folder.iterdir()) == ["episodes.parquet", "manifest.json", "turns.parquet"]
    assert not leftovers(root)

    assert episodes.schema.equals(EPISODES_SCHEMA, check_metadata=False), episodes.schema
    assert turns.schema.equals(TURNS_SCHEMA, check_metadata=False), turns.schema

    eps = episodes.to_pylist()
    assert sorted((e["goal_idx"], e["sample_idx"]) for e in eps) == sorted(REQUESTS)
    ids = [e["episode_id"] for e in eps]
    assert len(set(ids)) == len(ids) == len(REQUESTS)
    grouped = by_episode(turns)
    assert set(grouped) <= set(ids)  # every turn joins an episode
    assert turns.num_rows == sum(e["n_steps"] for e in eps)
    for e in eps:
        assert e["episode_id"] == f"{RUN}/reference//{e['goal_idx']}/{e['sample_idx']}"
        assert (e["run"], e["stage"], e["iteration"]) == (RUN, "reference", None)
        assert (e["checkpoint"], e["seed"]) == (reference["checkpoint"], PARAMS.seed)
        assert e["end_reason"] in END_REASONS
        ts = grouped.get(e["episode_id"], [])
        assert [t["turn"] for t in ts] == list(range(e["n_steps"]))  # one row per step, no gaps
        if e["end_reason"] == "step_cap":
            assert e["n_steps"] == PARAMS.max_episode_steps
        assert 0.0 <= e["reward"] <= 1.0
        assert e["success"] == (e["reward"] == 1.0)
        if e["end_reason"] != "bought":
            assert e["reward"] == 0.0
            assert all(e[p] is None for p in ("r_type", "r_att", "r_option", "r_price"))
        assert e["prompt_tokens"] == sum(len(t["prompt_ids"]) for t in ts)
        assert e["completion_tokens"] == sum(len(t["completion_ids"]) for t in ts)
        assert e["format_errors"] == sum(t["action"] == "" for t in ts)
        assert e["invalid_actions"] == sum(not t["valid"] for t in ts)
        assert e["invalid_actions"] >= e["format_errors"]  # an empty action is never valid
    assert turns.num_rows > 0


def test_reference_manifest(reference):
    m, eps, folder = reference["manifest"], reference["episodes"].to_pylist(), reference["folder"]
    assert (m["stage"], m["run"], m["iteration"], m["key"]) == ("reference", RUN, None, folder.name)
    assert m["params"] == {"stage": "reference", **dataclasses.asdict(PARAMS)}
    assert m["inputs"] == {**INPUTS, "checkpoint": reference["checkpoint"]}
    s = m["summary"]
    assert (s["goals"], s["episodes"], s["turns"]) == (2, len(eps), reference["turns"].num_rows)
    assert s["engine"] == "hf"
    assert s["engine_stats"] == {} and s["prefix_cache_hit_rate"] is None  # transformers counts nothing
    assert s["completion_tokens"] == sum(e["completion_tokens"] for e in eps)
    assert math.isclose(s["mean_reward"], sum(e["reward"] for e in eps) / len(eps))
    assert s["end_reasons"] == {r: sum(e["end_reason"] == r for e in eps) for r in {e["end_reason"] for e in eps}}


def test_turns_hold_the_exact_tokens(reference, hf_engine):
    tok = hf_engine.tokenizer
    stop_ids = hf_engine.stop_ids
    previous: dict[str, list[dict]] = {}
    for t in sorted(reference["turns"].to_pylist(), key=lambda r: (r["episode_id"], r["turn"])):
        ids = t["completion_ids"]
        assert 1 <= len(ids) <= PARAMS.max_new_tokens
        assert tok.decode(ids, skip_special_tokens=True) == t["completion_text"]
        assert (parse_action(t["completion_text"]) or "") == t["action"]
        if t["action"]:
            verb, arg = t["action"].split("[", 1)
            assert verb in ("search", "click") and f"[{arg}" in t["completion_text"]
            assert verb in t["completion_text"].lower()
        # the reply ends at the first token holding "]" or an end-of-turn id, else at max_new_tokens
        pieces = tok.convert_ids_to_tokens(ids)
        assert not any("]" in p or i in stop_ids for i, p in zip(ids[:-1], pieces[:-1]))
        if len(ids) < PARAMS.max_new_tokens:
            assert "]" in pieces[-1] or ids[-1] in stop_ids
        lps = t["completion_logprobs"]
        assert len(lps) == len(ids)
        assert all(math.isfinite(x) and x <= 0.0 for x in lps)
        prompt = tok.decode(t["prompt_ids"])
        assert f"Page: {t['observation']}" in prompt
        assert len(t["prompt_ids"]) <= PARAMS.max_prompt_tokens
        # the prompt replays the last history_turns turns: their page and the model's exact reply (these
        # prompts are far below the budget, so nothing is dropped)
        past = previous.setdefault(t["episode_id"], [])
        assert len(past) == t["turn"]
        for p in past[len(past) - min(len(past), PARAMS.history_turns):]:
            assert f"Page: {p['observation']}" in prompt
            assert p["completion_text"].strip() in prompt
        past.append(t)


def test_records_replay_in_the_environment(reference, hf_engine, generated_shop):
    """A fresh episode stepped with the recorded actions sees the recorded pages and prompts and ends with the
    recorded reward: the turn rows are the episode, not an approximation of it."""
    grouped = by_episode(reference["turns"])
    config = PARAMS.prompt()
    for e in reference["episodes"].to_pylist():
        ep = Episode(generated_shop, e["goal_idx"], max_steps=PARAMS.max_episode_steps)
        history = []
        reward = 0.0
        for t in grouped.get(e["episode_id"], []):
            assert not ep.done
            assert ep.observation() == t["observation"]
            assert ep.state.kind == t["page"]
            ids = encode_prompt(hf_engine.tokenizer, Turn.of(ep), history, config)
            assert ids == t["prompt_ids"]  # the prompt the engine got is rebuilt from the recorded history
            result = ep.step(t["action"])
            assert result.info["valid"] == t["valid"]
            reward = result.reward
            history.append((t["observation"], t["completion_text"]))
        assert ep.steps == e["n_steps"]
        if e["end_reason"] in ("bought", "step_cap"):
            assert ep.done and ep.end_reason == e["end_reason"]
        else:
            assert not ep.done
        assert reward == e["reward"]


def test_done_stage_is_skipped(reference, generated_shop):
    folder = reference["folder"]
    mtimes = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    again = rollout_stage(no_factory, generated_shop, REQUESTS, PARAMS, run=RUN, stage="reference", iteration=None,
                          checkpoint=reference["checkpoint"], inputs=INPUTS, root=reference["root"], progress=False)
    assert again == folder
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == mtimes


def test_changed_seed_is_a_new_stage_and_a_failing_factory_publishes_nothing(reference, generated_shop):
    """A changed seed is not the done stage (the factory is called); the factory failing leaves nothing."""
    root = reference["root"]
    before = sorted(root.rglob("manifest.json"))
    called = []

    def failing_factory(ckpt):
        called.append(ckpt)
        raise RuntimeError("no engine")

    with pytest.raises(RuntimeError, match="no engine"):
        rollout_stage(failing_factory, generated_shop, REQUESTS, dataclasses.replace(PARAMS, seed=1), run=RUN,
                      stage="reference", iteration=None, checkpoint=reference["checkpoint"], inputs=INPUTS,
                      root=root, progress=False)
    assert called == [reference["checkpoint"]]
    assert sorted(root.rglob("manifest.json")) == before
    assert sorted(p for p in (root / "runs" / RUN / "reference").iterdir()) == [reference["folder"]]
    assert not leftovers(root)


# ---------------------------------------------------------------------------------------------------------
# determinism
# ---------------------------------------------------------------------------------------------------------
def test_hf_rollout_is_deterministic_per_seed(reference, hf_engine, generated_shop):
    episodes, turns = run_episodes(hf_engine, generated_shop, REQUESTS, PARAMS)
    recorded = by_episode(reference["turns"])
    rec_eps = {(e["goal_idx"], e["sample_idx"]): e for e in reference["episodes"].to_pylist()}
    for e, ts in zip(episodes, turns):
        r = rec_eps[(e["goal_idx"], e["sample_idx"])]
        assert {k: r[k] for k in e} == e
        rts = recorded.get(r["episode_id"], [])
        assert len(ts) == len(rts)
        for t, rt in zip(ts, rts):
            for k in ("turn", "page", "observation", "prompt_ids", "completion_ids", "completion_text", "action",
                      "valid"):
                assert t[k] == rt[k], k
            np.testing.assert_array_equal(np.asarray(t["completion_logprobs"], dtype=np.float32),
                                          np.asarray(rt["completion_logprobs"], dtype=np.float32))

    # another seed samples other replies (compared on the first turn, whose prompts are the same)
    _, other = run_episodes(hf_engine, generated_shop, REQUESTS, dataclasses.replace(PARAMS, seed=1,
                                                                                      max_episode_steps=1))
    first = [rts[0]["completion_ids"] for rts in (recorded[f"{RUN}/reference//{g}/{s}"] for g, s in REQUESTS)]
    assert [ts[0]["prompt_ids"] for ts in other] == \
        [recorded[f"{RUN}/reference//{g}/{s}"][0]["prompt_ids"] for g, s in REQUESTS]
    assert [ts[0]["completion_ids"] for ts in other] != first


# ---------------------------------------------------------------------------------------------------------
# engine failures, context, atomic outputs
# ---------------------------------------------------------------------------------------------------------
def test_engine_error_ends_live_episodes_and_keeps_what_was_done(reference, hf_engine, generated_shop, tmp_path,
                                                                 caplog):
    engines = []

    def factory(ckpt):
        engines.append(WrappedEngine(hf_engine, fail_on=2))
        return engines[-1]

    with caplog.at_level(logging.WARNING, logger="stages.rollout"):
        folder = rollout_stage(factory, generated_shop, REQUESTS, PARAMS, run=RUN, stage="rollout", iteration=3,
                               checkpoint=reference["checkpoint"], inputs=INPUTS, root=tmp_path, progress=False)
    assert engines[0].calls == 2
    assert folder.parent == tmp_path / "runs" / RUN / "iter=0003" / "rollout"
    assert any("engine_error" in r.getMessage() and "RuntimeError" in r.getMessage() for r in caplog.records)
    episodes, turns = read_stage(folder)
    assert episodes.schema.equals(EPISODES_SCHEMA, check_metadata=False)
    assert turns.schema.equals(TURNS_SCHEMA, check_metadata=False)
    assert episodes.num_rows == len(REQUESTS)
    grouped = by_episode(turns)
    recorded = by_episode(reference["turns"])
    for e in episodes.to_pylist():
        assert e["episode_id"] == f"{RUN}/rollout/3/{e['goal_idx']}/{e['sample_idx']}"
        assert e["iteration"] == 3
        # every episode was live at the failing second call: it keeps its first turn and ends there
        assert (e["end_reason"], e["n_steps"], e["reward"], e["success"]) == ("engine_error", 1, 0.0, False)
        ts = grouped[e["episode_id"]]
        ref = recorded[f"{RUN}/reference//{e['goal_idx']}/{e['sample_idx']}"][0]
        assert len(ts) == 1
        for k in ("prompt_ids", "completion_ids", "completion_text", "action", "valid"):
            assert ts[0][k] == ref[k], k  # the turn before the failure is the uninterrupted run's turn
        assert e["prompt_tokens"] == len(ts[0]["prompt_ids"])
    assert read_manifest(folder)["summary"]["end_reasons"] == {"engine_error": len(REQUESTS)}
    assert not leftovers(tmp_path)


def test_engine_error_keeps_episodes_that_ended_before(hf_engine, generated_shop):
    """Episodes over before the failing call keep their end; only the live ones end with engine_error.

    Goals with a long first prompt end with "context" when the budget is the shortest first prompt; the
    engine then fails on its first call."""
    goals = list(range(8))
    lengths = {g: len(first_prompt(hf_engine.tokenizer, generated_shop, g)) for g in goals}
    budget = min(lengths.values())
    assert max(lengths.values()) > budget  # the goals differ, so both kinds of end occur
    engine = WrappedEngine(hf_engine, fail_on=1)
    episodes, turns = run_episodes(engine, generated_shop, episode_requests(goals, 1),
                                   dataclasses.replace(PARAMS, max_prompt_tokens=budget))
    assert engine.calls == 1
    assert [e["end_reason"] for e in episodes] == \
        ["engine_error" if lengths[g] <= budget else "context" for g in goals]
    assert all(e["n_steps"] == 0 and e["prompt_tokens"] == 0 for e in episodes) and turns == [[]] * len(goals)


def test_interrupt_in_the_engine_publishes_nothing(embedded_model, hf_engine, generated_shop, tmp_path):
    engine = WrappedEngine(hf_engine, fail_on=1, error=Abort)
    with pytest.raises(Abort):
        rollout_stage(lambda ckpt: engine, generated_shop, REQUESTS, PARAMS, run=RUN, stage="reference",
                      iteration=None, checkpoint=str(embedded_model), inputs=INPUTS, root=tmp_path,
                      progress=False)
    assert engine.calls == 1
    assert not list(tmp_path.rglob("manifest.json")) and not [p for p in tmp_path.rglob("*") if p.is_file()]
    assert not (tmp_path / "runs" / RUN / "reference").exists() or \
        not list((tmp_path / "runs" / RUN / "reference").iterdir())  # no folder at any stage path
    assert not leftovers(tmp_path)


def context_stage(engine, shop, checkpoint, root, params, **overrides):
    """A stage whose prompts never fit (cheap: nothing is generated); returns (folder, engines made)."""
    made = []

    def factory(ckpt):
        made.append(WrappedEngine(engine))
        return made[-1]

    kwargs = {"run": RUN, "stage": "reference", "iteration": None, "checkpoint": checkpoint, "inputs": INPUTS,
              "root": root, "progress": False, **overrides}
    requests = kwargs.pop("requests", REQUESTS)
    return rollout_stage(factory, shop, requests, params, **kwargs), made


def test_prompt_over_budget_ends_every_episode_with_context(embedded_model, hf_engine, generated_shop, tmp_path):
    params = dataclasses.replace(PARAMS, max_prompt_tokens=50)  # far below the ~250-token first prompt
    folder, engines = context_stage(hf_engine, generated_shop, str(embedded_model), tmp_path, params)
    assert len(engines) == 1 and engines[0].calls == 0  # nothing fits: the engine is never asked
    episodes, turns = read_stage(folder)
    assert episodes.schema.equals(EPISODES_SCHEMA, check_metadata=False)
    assert turns.schema.equals(TURNS_SCHEMA, check_metadata=False)
    assert turns.num_rows == 0 and episodes.num_rows == len(REQUESTS)
    for e in episodes.to_pylist():
        assert (e["end_reason"], e["n_steps"], e["reward"], e["success"]) == ("context", 0, 0.0, False)
        assert (e["prompt_tokens"], e["completion_tokens"], e["format_errors"], e["invalid_actions"]) == (0, 0, 0, 0)
    m = read_manifest(folder)
    assert m["summary"]["end_reasons"] == {"context": len(REQUESTS)} and m["summary"]["turns"] == 0


@pytest.mark.parametrize("change", [
    {"params": {"seed": 1}}, {"params": {"max_new_tokens": 11}}, {"params": {"temperature": 0.0}},
    {"params": {"history_turns": 1}}, {"requests": [(0, 0), (1, 0)]}, {"inputs": {**INPUTS, "goals": "other"}},
    {"checkpoint": "/elsewhere/model"}, {"stage": "eval"}, {"iteration": 1}, {"run": "other-run"},
], ids=lambda c: "-".join(f"{k}" + (f"={next(iter(v))}" if k == "params" else "") for k, v in c.items()))
def test_any_change_gives_a_new_folder(change, embedded_model, hf_engine, generated_shop, tmp_path):
    base_params = dataclasses.replace(PARAMS, max_prompt_tokens=50)  # cheap: nothing is generated
    base, _ = context_stage(hf_engine, generated_shop, str(embedded_model), tmp_path, base_params)
    change = dict(change)
    params = dataclasses.replace(base_params, **change.pop("params", {}))
    changed, engines = context_stage(hf_engine, generated_shop, change.pop("checkpoint", str(embedded_model)),
                                     tmp_path, params, **change)
    assert len(engines) == 1 and engines[0].calls == 0  # not taken for the done base stage
    assert changed != base and read_manifest(changed) is not None and read_manifest(base) is not None
    same, engines = context_stage(hf_engine, generated_shop, str(embedded_model), tmp_path, base_params)
    assert same == base and engines == []


def test_force_cached_only_and_extra_tables(embedded_model, hf_engine, generated_shop, tmp_path):
    params = dataclasses.replace(PARAMS, max_prompt_tokens=50)  # cheap: nothing is generated
    ckpt = str(embedded_model)
    with pytest.raises(ValueError, match="not cached"):
        context_stage(hf_engine, generated_shop, ckpt, tmp_path, params, cached_only=True)
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]

    def extra(episode_rows):
        schema = pa.schema([EPISODES_SCHEMA.field("goal_idx"), EPISODES_SCHEMA.field("end_reason")])
        return {"summary": to_table([{k: e[k] for k in schema.names} for e in episode_rows], schema)}

    folder, made = context_stage(hf_engine, generated_shop, ckpt, tmp_path, params, extra_tables=extra)
    assert len(made) == 1
    assert sorted(p.name for p in folder.iterdir()) == ["episodes.parquet", "manifest.json", "summary.parquet",
                                                         "turns.parquet"]
    assert read_table(folder / "summary.parquet").num_rows == len(REQUESTS)
    assert context_stage(hf_engine, generated_shop, ckpt, tmp_path, params, cached_only=True) == (folder, [])

    before = (folder / "manifest.json").stat().st_mtime_ns
    again, made = context_stage(hf_engine, generated_shop, ckpt, tmp_path, params, force=True)
    assert again == folder and len(made) == 1  # recomputed into the same folder
    assert (folder / "manifest.json").stat().st_mtime_ns != before
    assert sorted(p.name for p in folder.iterdir()) == ["episodes.parquet", "manifest.json", "turns.parquet"]
    assert not leftovers(tmp_path)


def test_stage_output_publishes_nothing_when_the_body_fails(tmp_path):
    folder = tmp_path / "runs" / "r" / "reference" / "abc123"
    table = to_table([{"episode_id": "x", "turn": 0, "page": "search", "observation": "o", "prompt_ids": [1],
                       "completion_ids": [2], "completion_logprobs": [-0.5], "completion_text": "t",
                       "action": "", "valid": False}], TURNS_SCHEMA)
    with pytest.raises(RuntimeError, match="crash"):
        with stage_output(folder, {"stage": "reference"}) as tmp:
            write_table(table, tmp / "turns.parquet")
            assert (tmp / "turns.parquet").is_file() and tmp.parent == folder.parent
            raise RuntimeError("crash after the first table")
    assert not folder.exists() and read_manifest(folder) is None
    assert list(folder.parent.iterdir()) == []  # no .tmp-* folder left

    # an unfinished leftover (no manifest) is not a result: the next success replaces it
    folder.mkdir()
    (folder / "stale.parquet").write_bytes(b"half")
    assert read_manifest(folder) is None
    with stage_output(folder, {"stage": "reference"}) as tmp:
        write_table(table, tmp / "turns.parquet")
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "turns.parquet"]
    assert read_manifest(folder) == {"stage": "reference"}
    assert read_table(folder / "turns.parquet").to_pylist() == table.to_pylist()
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]


# ---------------------------------------------------------------------------------------------------------
# small pure pieces
# ---------------------------------------------------------------------------------------------------------
def test_to_table_rejects_a_wrong_column_set():
    row = {name: None for name in EPISODES_SCHEMA.names}
    assert to_table([row], EPISODES_SCHEMA).num_rows == 1
    missing = {k: v for k, v in row.items() if k != "reward"}
    with pytest.raises(ValueError, match="reward"):
        to_table([missing], EPISODES_SCHEMA)
    with pytest.raises(ValueError, match="extra"):
        to_table([{**row, "extra": 1}], EPISODES_SCHEMA)
    with pytest.raises(ValueError):
        to_table([{k: v for k, v in row.items() if k != "episode_id"} | {"episode": "x"}], EPISODES_SCHEMA)
    assert to_table([], TURNS_SCHEMA).schema.equals(TURNS_SCHEMA)


def test_to_table_rejects_a_wrong_later_row():
    row = {name: None for name in EPISODES_SCHEMA.names}
    with pytest.raises(ValueError):
        to_table([row, {k: v for k, v in row.items() if k != "reward"}], EPISODES_SCHEMA)


@pytest.mark.parametrize("history_turns", [1, 2, 3, 4])
def test_prompt_keeps_the_last_history_turns(history_turns, hf_engine, generated_shop):
    """history_turns = k keeps the last min(k, len(history)) turns, oldest dropped first."""
    history = [("PAGE-ONE", "search[first reply]"), ("PAGE-TWO", "click[second reply]")]
    ep = Episode(generated_shop, 0)
    ids = encode_prompt(hf_engine.tokenizer, Turn.of(ep), history,
                        RolloutParams(history_turns=history_turns, max_prompt_tokens=4000).prompt())
    text = hf_engine.tokenizer.decode(ids)
    kept = history[len(history) - min(history_turns, len(history)):]
    for page, reply in history:
        present = (page, reply) in kept
        assert (f"Page: {page}" in text, reply in text) == (present, present), (page, history_turns)


def test_reference_samples_schedule():
    assert [reference_samples(8, True, p, 30) for p in range(30)] == [8] * 10 + [4] * 10 + [2] * 10
    assert [reference_samples(8, False, p, 30) for p in range(30)] == [8] * 30
    assert [reference_samples(4, True, p, 9) for p in range(9)] == [4] * 3 + [2] * 6  # never below 2
    assert [reference_samples(2, True, p, 6) for p in range(6)] == [2] * 6
    assert [reference_samples(k, False, 5, 6) for k in (1, 3, 16)] == [1, 3, 16]
    counts = [reference_samples(8, True, p, 10) for p in range(10)]
    assert counts == sorted(counts, reverse=True) and counts[0] == 8 and counts[-1] == 2


def test_episode_requests():
    assert episode_requests([5, 7], 2) == [(5, 0), (5, 1), (7, 0), (7, 1)]
    assert episode_requests([5, 7], [1, 3]) == [(5, 0), (7, 0), (7, 1), (7, 2)]
    assert episode_requests([5], 0) == []
    with pytest.raises(ValueError, match="2 goals"):
        episode_requests([5, 7], [1])


def test_rollout_params_prompt():
    p = RolloutParams(history_turns=3, max_prompt_tokens=700)
    assert (p.prompt().history_turns, p.prompt().max_prompt_tokens) == (3, 700)
