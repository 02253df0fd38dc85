"""The weights stage: V* and per-episode weights from DuckDB SQL against a NumPy reference, diagnostics,
errors, and the stage's skip-if-done / force / cached_only behaviour over real Parquet files."""
from __future__ import annotations

import math
import os
import re

import numpy as np
import pyarrow.parquet as pq
import pytest

from stages.weights import WeightsParams, compute_weights, weights_stage
from storage.parquet import read_table, write_table
from storage.stages import read_manifest
from storage.tables import EPISODES_SCHEMA, to_table

BETAS = (0.01, 0.1, 0.5, 5.0)
RUN = "test-weights"


# ---------------------------------------------------------------------------------------------------------
# helpers: episodes tables and the NumPy reference
# ---------------------------------------------------------------------------------------------------------
def episode_row(stage: str, goal: int, sample: int, reward: float, format_errors: int = 0,
                iteration: int | None = None) -> dict:
    return {"episode_id": f"{RUN}/{stage}/{'' if iteration is None else iteration}/{goal}/{sample}",
            "run": RUN, "iteration": iteration, "stage": stage, "goal_idx": goal, "sample_idx": sample,
            "checkpoint": "ckpt", "seed": 0, "reward": float(reward), "r_type": None, "r_att": None,
            "r_option": None, "r_price": None, "success": reward == 1.0, "n_steps": 3, "end_reason": "bought",
            "format_errors": int(format_errors), "invalid_actions": int(format_errors), "prompt_tokens": 10,
            "completion_tokens": 5}


def write_episodes(folder, rows: list[dict]):
    folder.mkdir(parents=True, exist_ok=True)
    write_table(to_table(rows, EPISODES_SCHEMA), folder / "episodes.parquet")
    return folder


def random_reward(rng) -> float:
    kind = rng.integers(3)
    return [0.0, float(rng.uniform(0.05, 0.95)), 1.0][kind]


def random_batch(seed: int, n_goals: int = 6):
    """Reference: goals with 1..8 samples, rewards in {0, partial, 1}, some format errors; rollout: 1..4
    samples of each goal (the last goal gets no rollout, like a goal of another iteration of the reference
    block: it gets no V* row)."""
    rng = np.random.default_rng(seed)
    reference, rollout = [], []
    for g in range(n_goals):
        for s in range(int(rng.integers(1, 9))):
            reference.append(episode_row("reference", g, s, random_reward(rng), int(rng.integers(0, 3))))
        if g < n_goals - 1:
            for s in range(int(rng.integers(1, 5))):
                rollout.append(episode_row("rollout", g, s, random_reward(rng), int(rng.integers(0, 3)),
                                           iteration=1))
    return reference, rollout


def np_v_star(rewards: np.ndarray, beta: float) -> float:
    """beta * ln(mean(exp(r / beta))) as a log-sum-exp (np.logaddexp.reduce), stable at any beta."""
    return float(beta * (np.logaddexp.reduce(rewards / beta) - math.log(len(rewards))))


def np_reference(reference: list[dict], rollout: list[dict], params: WeightsParams):
    """(v_star rows by goal, weights rows by episode_id) computed in NumPy from the rows."""
    fp = params.format_penalty
    v_star = {}
    for g in sorted({e["goal_idx"] for e in reference} & {e["goal_idx"] for e in rollout}):
        eps = [e for e in reference if e["goal_idx"] == g]
        r = np.array([e["reward"] - fp * e["format_errors"] for e in eps])
        v_star[g] = {"n_ref": len(eps), "ref_successes": sum(e["reward"] == 1.0 for e in eps),
                     "ref_mean": float(r.mean()), "ref_max": float(r.max()),
                     "ref_max_reward": max(e["reward"] for e in eps), "v_star": np_v_star(r, params.beta)}
    r = np.array([e["reward"] - fp * e["format_errors"] for e in rollout])
    vs = np.array([v_star[e["goal_idx"]]["v_star"] for e in rollout])
    adv = r - vs
    groups = np.array([e["goal_idx"] if params.adv_norm == "goal" else -1 for e in rollout])
    norm, degenerate = np.zeros_like(adv), np.zeros(len(adv), dtype=bool)
    for g in set(groups.tolist()):
        a = adv[groups == g]
        norm[groups == g] = (a - a.mean()) / (a.std(ddof=1) + 1e-6) if len(a) > 1 else a - a.mean()
        degenerate[groups == g] = a.max() - a.min() <= 1e-9
    adv_norm = np.clip(norm, -params.adv_clip, params.adv_clip)
    weight = np.clip(adv_norm + 1.0, 0.1, 5.0)
    if params.skip_degenerate:
        weight[degenerate] = 0.0
    weight[np.array([e["reward"] for e in rollout]) < params.min_reward] = 0.0
    weights = {e["episode_id"]: {"goal_idx": e["goal_idx"], "sample_idx": e["sample_idx"], "reward": e["reward"],
                                 "r": r[i], "v_star": vs[i], "advantage": adv[i], "adv_norm": adv_norm[i],
                                 "weight": weight[i]}
               for i, e in enumerate(rollout)}
    return v_star, weights


def run_weights(tmp_path, reference, rollout, params):
    ref = write_episodes(tmp_path / "reference", reference)
    roll = write_episodes(tmp_path / "rollout", rollout)
    return compute_weights([ref / "episodes.parquet"], [roll / "episodes.parquet"], params)


def by_key(table, key):
    return {row[key]: row for row in table.to_pylist()}


def leftovers(root) -> list:
    return [p for p in root.rglob("*") if p.name.startswith(".tmp-")]


# ---------------------------------------------------------------------------------------------------------
# 1. V* and weights against NumPy
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("format_penalty,adv_clip,adv_norm,skip_degenerate,min_reward", [
    (0.0, 3.0, "batch", False, 0.0), (0.1, 0.5, "batch", False, 0.0), (0.0, 3.0, "goal", False, 0.0),
    (0.0, 3.0, "goal", True, 0.0), (0.0, 3.0, "goal", True, 0.5)])
def test_v_star_and_weights_match_numpy(tmp_path, seed, beta, format_penalty, adv_clip, adv_norm, skip_degenerate,
                                        min_reward):
    params = WeightsParams(beta=beta, adv_clip=adv_clip, format_penalty=format_penalty, adv_norm=adv_norm,
                           skip_degenerate=skip_degenerate, min_reward=min_reward)
    reference, rollout = random_batch(seed)
    weights, v_star, _ = run_weights(tmp_path, reference, rollout, params)
    want_v, want_w = np_reference(reference, rollout, params)

    got_v = by_key(v_star, "goal_idx")
    assert v_star["goal_idx"].to_pylist() == sorted(want_v)  # one row per rollout goal, in goal order
    assert len(want_v) < len({e["goal_idx"] for e in reference})  # the block's other goals are left out
    for g, want in want_v.items():
        got = got_v[g]
        assert (got["n_ref"], got["ref_successes"]) == (want["n_ref"], want["ref_successes"])
        for col in ("ref_mean", "ref_max", "ref_max_reward", "v_star"):
            assert math.isfinite(got[col])
            assert got[col] == pytest.approx(want[col], rel=1e-9, abs=1e-9), (g, col)

    assert weights["episode_id"].to_pylist() == sorted(want_w)  # one row per rollout episode, ordered
    for eid, want in want_w.items():
        got = by_key(weights, "episode_id")[eid]
        assert (got["goal_idx"], got["sample_idx"], got["reward"]) == \
               (want["goal_idx"], want["sample_idx"], want["reward"])
        for col in ("r", "v_star", "advantage", "adv_norm", "weight"):
            assert math.isfinite(got[col])
            assert got[col] == pytest.approx(want[col], rel=1e-7, abs=1e-7), (eid, col)
        assert -adv_clip <= got["adv_norm"] <= adv_clip
        assert 0.1 <= got["weight"] <= 5.0 or ((skip_degenerate or got["reward"] < min_reward)
                                               and got["weight"] == 0.0)


def test_goal_normalisation_and_skipping_degenerate_goals(tmp_path):
    """Goal 0: both rollouts failed (equal advantages); goal 1: one success, one failure. Per batch, goal 0's
    failures are still imitated (weight > 0.1); per goal, they sit at the goal's mean (weight 1), and with
    skip_degenerate they get weight 0 while goal 1's success and failure keep their weights."""
    reference = [episode_row("reference", g, s, r) for g in (0, 1) for s, r in enumerate([0.0, 1.0])]
    rollout = [episode_row("rollout", 0, 0, 0.0, iteration=1), episode_row("rollout", 0, 1, 0.0, iteration=1),
               episode_row("rollout", 1, 0, 1.0, iteration=1), episode_row("rollout", 1, 1, 0.0, iteration=1)]
    weight_of = {}
    for adv_norm, skip in [("batch", False), ("goal", False), ("goal", True), ("batch", True)]:
        weights, _, _ = run_weights(tmp_path / f"{adv_norm}-{skip}", reference, rollout,
                                    WeightsParams(adv_norm=adv_norm, skip_degenerate=skip))
        weight_of[adv_norm, skip] = [round(w, 6) for w in weights["weight"].to_pylist()]
    assert weight_of["goal", False][:2] == [1.0, 1.0]
    assert weight_of["goal", True][:2] == [0.0, 0.0] and weight_of["goal", True][2:] == weight_of["goal", False][2:]
    assert weight_of["goal", False][2] > 1.0 > weight_of["goal", False][3]
    assert weight_of["batch", True] == weight_of["batch", False]  # the batch as a whole is not degenerate
    assert 0.1 < weight_of["batch", False][0] < 1.0


def test_min_reward_imitates_only_what_reached_it(tmp_path):
    """Goal 0: two failures with different partial rewards (0.1 and 0.3); per goal, the better failure gets
    weight ~2 and is imitated. min_reward 1.0 keeps only exact purchases: goal 0's episodes and goal 1's failure get
    weight 0, and goal 1's success keeps the weight it has without the filter (the filter does not renormalise)."""
    reference = [episode_row("reference", g, s, r) for g in (0, 1) for s, r in enumerate([0.2, 1.0])]
    rollout = [episode_row("rollout", 0, 0, 0.1, iteration=1), episode_row("rollout", 0, 1, 0.3, iteration=1),
               episode_row("rollout", 1, 0, 1.0, iteration=1), episode_row("rollout", 1, 1, 0.4, iteration=1)]
    weight_of = {}
    for min_reward in (0.0, 1.0):
        weights, _, _ = run_weights(tmp_path / str(min_reward), reference, rollout,
                                    WeightsParams(adv_norm="goal", min_reward=min_reward))
        weight_of[min_reward] = weights["weight"].to_pylist()
    assert weight_of[0.0][1] > 1.5 and weight_of[0.0][2] > 1.5  # the better failure is imitated like the success
    assert weight_of[1.0] == [0.0, 0.0, weight_of[0.0][2], 0.0]
    with pytest.raises(ValueError, match="min-reward must be in"):
        WeightsParams(min_reward=1.5).check()


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_v_star_limits(tmp_path, seed):
    """beta -> 0: the best sample (finite at beta = 0.01, where exp(r / beta) reaches e^100); beta large: the
    mean. Bounds: max(r) - beta ln n <= V* <= max(r), and mean(r) <= V* <= mean(r) + (max - min)^2 / (8 beta)
    (Jensen and Hoeffding's lemma), checked against the rows, not against the formula."""
    reference, rollout = random_batch(seed)
    groups = {}
    for e in reference:
        groups.setdefault(e["goal_idx"], []).append(e["reward"])
    for beta in (0.01, 5.0, 1000.0):
        _, v_star, _ = run_weights(tmp_path / str(beta), reference, rollout, WeightsParams(beta=beta))
        for g, v in zip(v_star["goal_idx"].to_pylist(), v_star["v_star"].to_pylist()):
            r = np.array(groups[g])
            assert v is not None and math.isfinite(v)
            assert r.mean() - 1e-12 <= v <= r.max() + 1e-12
            if beta == 0.01:
                assert r.max() - beta * math.log(len(r)) - 1e-12 <= v
                assert v == pytest.approx(r.max(), abs=0.021)  # 0.01 * ln 8
            else:
                assert v <= r.mean() + (r.max() - r.min()) ** 2 / (8 * beta) + 1e-12
        if beta == 1000.0:
            want = [np.mean(groups[g]) for g in v_star["goal_idx"].to_pylist()]
            np.testing.assert_allclose(v_star["v_star"].to_pylist(), want, atol=2e-4)


def test_v_star_at_tiny_beta_does_not_overflow(tmp_path):
    """beta = 0.01 with rewards far apart: a naive exp(r / beta) of r = 8 would overflow a double
    (e^800); the stored V* stays finite and equals the best reward up to beta * ln n."""
    reference = [episode_row("reference", 0, s, r) for s, r in enumerate([0.0, 1.0, 1.0, 0.25])]
    rollout = [episode_row("rollout", 0, 0, 0.5, iteration=1)]
    # format_penalty 2 with 4 format errors puts one sample at r = -8 (exp(-800) underflows to 0, harmless)
    reference[0]["format_errors"] = 4
    for beta in (0.01, 0.001):
        _, v_star, _ = run_weights(tmp_path / str(beta), reference, rollout,
                                   WeightsParams(beta=beta, format_penalty=2.0))
        (v,) = v_star["v_star"].to_pylist()
        assert math.isfinite(v)
        assert v == pytest.approx(1.0 + beta * math.log(2 / 4), abs=1e-9)  # two of four samples reach max 1
    # a large reward scale: r / beta = 900 overflows exp() in float64 without the max shift
    reference = [episode_row("reference", 0, s, r) for s, r in enumerate([9.0, 8.0])]
    _, v_star, _ = run_weights(tmp_path / "big", reference, rollout, WeightsParams(beta=0.01))
    (v,) = v_star["v_star"].to_pylist()
    assert math.isfinite(v)
    assert v == pytest.approx(np_v_star(np.array([9.0, 8.0]), 0.01), abs=1e-9)


def test_one_episode_batch(tmp_path):
    """One rollout episode: the sample std is undefined; adv_norm = adv - mean = 0 and the weight is 1."""
    reference = [episode_row("reference", 3, s, r) for s, r in enumerate([0.0, 1.0])]
    rollout = [episode_row("rollout", 3, 0, 1.0, iteration=1)]
    weights, v_star, _ = run_weights(tmp_path, reference, rollout, WeightsParams(beta=0.5))
    (row,) = weights.to_pylist()
    v = 0.5 * math.log((1 + math.exp(2.0)) / 2)
    assert row["v_star"] == pytest.approx(v, rel=1e-12)
    assert row["advantage"] == pytest.approx(1.0 - v, rel=1e-12)
    assert row["adv_norm"] == 0.0
    assert row["weight"] == 1.0


def test_adv_clip(tmp_path):
    """19 failures and one success on the same goal: the success's normalised advantage is
    0.95 / sqrt(0.05) = 4.25 before clipping; adv_clip caps it and the weight follows (capped at 5)."""
    reference = [episode_row("reference", 0, s, r) for s, r in enumerate([0.0, 0.5, 1.0])]
    rollout = [episode_row("rollout", 0, s, 1.0 if s == 0 else 0.0, iteration=1) for s in range(20)]
    raw_top = 0.95 / (math.sqrt(0.05) + 1e-6)
    raw_low = -0.05 / (math.sqrt(0.05) + 1e-6)
    for adv_clip, top_norm, top_weight in [(1.0, 1.0, 2.0), (3.0, 3.0, 4.0), (10.0, raw_top, 5.0)]:
        weights, _, _ = run_weights(tmp_path / str(adv_clip), reference, rollout,
                                    WeightsParams(beta=0.5, adv_clip=adv_clip))
        rows = by_key(weights, "episode_id")
        top = rows[f"{RUN}/rollout/1/0/0"]
        assert top["adv_norm"] == pytest.approx(top_norm, rel=1e-9)
        assert top["weight"] == pytest.approx(top_weight, rel=1e-9)
        for s in range(1, 20):
            low = rows[f"{RUN}/rollout/1/0/{s}"]
            assert low["adv_norm"] == pytest.approx(raw_low, rel=1e-9)
            assert low["weight"] == pytest.approx(1.0 + raw_low, rel=1e-9)
    # a tiny clip also bounds the negative side and the weight floor holds at 0.1
    rollout = [episode_row("rollout", 0, s, 0.0 if s == 0 else 1.0, iteration=1) for s in range(20)]
    weights, _, _ = run_weights(tmp_path / "neg", reference, rollout, WeightsParams(beta=0.5, adv_clip=3.0))
    bottom = by_key(weights, "episode_id")[f"{RUN}/rollout/1/0/0"]
    assert bottom["adv_norm"] == pytest.approx(-3.0)
    assert bottom["weight"] == pytest.approx(0.1)
    weights, _, _ = run_weights(tmp_path / "neg2", reference, rollout, WeightsParams(beta=0.5, adv_clip=0.5))
    bottom = by_key(weights, "episode_id")[f"{RUN}/rollout/1/0/0"]
    assert bottom["adv_norm"] == pytest.approx(-0.5)
    assert bottom["weight"] == pytest.approx(0.5)


def test_format_penalty_in_reference_and_rollout(tmp_path):
    """format_penalty is subtracted once per format error, from the reference rewards (so V*) and the
    rollout rewards (so r and the advantage); `reward` keeps the environment's value."""
    ref_rewards = [0.0, 0.5, 1.0]
    reference = [episode_row("reference", 0, s, r, format_errors=2) for s, r in enumerate(ref_rewards)]
    rollout = [episode_row("rollout", 0, 0, 0.5, format_errors=0, iteration=1),
               episode_row("rollout", 0, 1, 0.5, format_errors=3, iteration=1)]
    plain_w, plain_v, _ = run_weights(tmp_path / "plain", reference, rollout, WeightsParams(beta=0.5))
    pen_w, pen_v, _ = run_weights(tmp_path / "pen", reference, rollout,
                                  WeightsParams(beta=0.5, format_penalty=0.1))
    # every reference sample has 2 errors: V* (shift-equivariant) drops by exactly 0.2
    (v0,), (v1,) = plain_v["v_star"].to_pylist(), pen_v["v_star"].to_pylist()
    assert v0 == pytest.approx(np_v_star(np.array(ref_rewards), 0.5), rel=1e-12)
    assert v1 == pytest.approx(v0 - 0.2, abs=1e-12)
    assert pen_v["ref_mean"].to_pylist()[0] == pytest.approx(0.5 - 0.2)
    assert pen_v["ref_max"].to_pylist()[0] == pytest.approx(1.0 - 0.2)
    plain, pen = by_key(plain_w, "episode_id"), by_key(pen_w, "episode_id")
    for s, errors in ((0, 0), (1, 3)):
        eid = f"{RUN}/rollout/1/0/{s}"
        assert pen[eid]["reward"] == plain[eid]["reward"] == 0.5
        assert plain[eid]["r"] == 0.5
        assert pen[eid]["r"] == pytest.approx(0.5 - 0.1 * errors, abs=1e-12)
        assert pen[eid]["advantage"] == pytest.approx(pen[eid]["r"] - v1, abs=1e-12)
    # without the penalty the two rollouts tie; with it the one with format errors gets the lower weight
    assert plain[f"{RUN}/rollout/1/0/0"]["weight"] == plain[f"{RUN}/rollout/1/0/1"]["weight"]
    assert pen[f"{RUN}/rollout/1/0/0"]["weight"] > pen[f"{RUN}/rollout/1/0/1"]["weight"]


# ---------------------------------------------------------------------------------------------------------
# 2. diagnostics
# ---------------------------------------------------------------------------------------------------------
def test_diagnostics_v_star_zero(tmp_path):
    reference = ([episode_row("reference", 0, s, 0.0) for s in range(3)]
                 + [episode_row("reference", 1, s, r) for s, r in enumerate([0.0, 1.0])]
                 + [episode_row("reference", 2, 0, 0.0)])
    rollout = [episode_row("rollout", g, s, r, iteration=1)
               for g, s, r in [(0, 0, 1.0), (1, 0, 0.0), (1, 1, 1.0), (2, 0, 0.5)]]
    _, v_star, diagnostics = run_weights(tmp_path, reference, rollout, WeightsParams())
    zero = {g for g, v in zip(v_star["goal_idx"].to_pylist(), v_star["v_star"].to_pylist()) if v == 0.0}
    assert zero == {0, 2}
    rows = diagnostics.to_pylist()
    assert sorted((r["check"], r["goal_idx"]) for r in rows) == [("v_star_zero", 0), ("v_star_zero", 2)]
    assert all(r["value"] == 0.0 and r["advice"] for r in rows)


def test_diagnostics_v_star_zero_looks_at_the_reward_not_the_penalised_v_star(tmp_path):
    """With a format penalty, a goal that earned nothing has V* < 0 and is flagged; one that earned 0.1 with
    one format error (V* = 0 exactly at penalty 0.1) is not."""
    zero = episode_row("reference", 0, 0, 0.0)
    small = episode_row("reference", 1, 0, 0.1)
    reference = [{**zero, "format_errors": 1}, {**small, "format_errors": 1}]
    rollout = [episode_row("rollout", g, 0, 0.0, iteration=1) for g in (0, 1)]
    _, v_star, diagnostics = run_weights(tmp_path, reference, rollout, WeightsParams(format_penalty=0.1))
    assert v_star["v_star"].to_pylist()[0] < 0 and v_star["v_star"].to_pylist()[1] == pytest.approx(0.0)
    assert [(r["check"], r["goal_idx"]) for r in diagnostics.to_pylist()] == [("v_star_zero", 0)]


def test_diagnostics_all_advantages_negative(tmp_path):
    reference = [episode_row("reference", g, s, 1.0) for g in (0, 1) for s in range(2)]
    rollout = [episode_row("rollout", g, s, r, iteration=1) for g, s, r in [(0, 0, 0.0), (0, 1, 0.5), (1, 0, 0.9)]]
    weights, _, diagnostics = run_weights(tmp_path, reference, rollout, WeightsParams())
    assert max(weights["advantage"].to_pylist()) < 0
    (row,) = diagnostics.to_pylist()
    assert (row["check"], row["goal_idx"]) == ("all_advantages_negative", None)
    assert row["value"] == pytest.approx(0.9 - 1.0)  # the largest advantage
    assert row["advice"]


def test_diagnostics_healthy_batch(tmp_path):
    reference = [episode_row("reference", g, s, r) for g in (0, 1) for s, r in enumerate([0.0, 0.5, 1.0])]
    rollout = [episode_row("rollout", g, s, r, iteration=1) for g, s, r in [(0, 0, 0.0), (0, 1, 1.0), (1, 0, 0.5)]]
    weights, _, diagnostics = run_weights(tmp_path, reference, rollout, WeightsParams())
    assert max(weights["advantage"].to_pylist()) > 0
    assert diagnostics.num_rows == 0
    assert diagnostics.schema.names == ["check", "goal_idx", "value", "advice"]


# ---------------------------------------------------------------------------------------------------------
# 3. errors
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1])
def test_without_a_reference_pass_goal_normalised_weights_are_the_same(tmp_path, seed):
    """--v-star-samples 0: V* = 0 for every goal; a goal's advantages are normalised among themselves, so V*
    cancels and the weights equal those of the reference's V* (weights.sql's arithmetic, to rounding)."""
    reference, rollout = random_batch(seed)
    params = WeightsParams(adv_norm="goal", skip_degenerate=True, min_reward=0.5)
    with_v_star, _, _ = run_weights(tmp_path / "with", reference, rollout, params)
    roll = write_episodes(tmp_path / "without" / "rollout", rollout)
    weights, v_star, diagnostics = compute_weights([], [roll / "episodes.parquet"], params)
    assert v_star["goal_idx"].to_pylist() == sorted({e["goal_idx"] for e in rollout})
    assert set(v_star["v_star"].to_pylist()) == {0.0} and set(v_star["n_ref"].to_pylist()) == {0}
    assert weights["advantage"].to_pylist() == weights["r"].to_pylist()
    assert with_v_star["v_star"].to_pylist() != weights["v_star"].to_pylist()  # the reference's V* is not 0
    assert weights["weight"].to_pylist() == pytest.approx(with_v_star["weight"].to_pylist(), abs=1e-9)
    assert weights["adv_norm"].to_pylist() == pytest.approx(with_v_star["adv_norm"].to_pylist(), abs=1e-6)
    assert diagnostics.num_rows == 0 or "v_star_zero" not in diagnostics["check"].to_pylist()  # nothing sampled


def test_rollout_goal_without_reference(tmp_path):
    reference = [episode_row("reference", 0, s, 1.0) for s in range(2)]
    rollout = [episode_row("rollout", 0, 0, 1.0, iteration=1), episode_row("rollout", 17, 0, 0.0, iteration=1)]
    with pytest.raises(ValueError, match=r"\b17\b") as e:
        run_weights(tmp_path, reference, rollout, WeightsParams())
    assert "\n" not in str(e.value)
    assert not re.search(r"\[[^\]]*\b0\b[^\]]*\]", str(e.value))  # only the missing goal is listed


@pytest.mark.parametrize("flag,params", [
    ("beta", WeightsParams(beta=0.0)), ("beta", WeightsParams(beta=-0.5)),
    ("adv-clip", WeightsParams(adv_clip=0.0)), ("adv-clip", WeightsParams(adv_clip=-1.0)),
    ("format-penalty", WeightsParams(format_penalty=-0.1)), ("adv-norm", WeightsParams(adv_norm="median")),
])
def test_bad_params(tmp_path, flag, params):
    with pytest.raises(ValueError, match=flag) as e:
        params.check()
    assert "\n" not in str(e.value)
    reference = [episode_row("reference", 0, 0, 1.0)]
    rollout = [episode_row("rollout", 0, 0, 1.0, iteration=1)]
    with pytest.raises(ValueError, match=flag):
        run_weights(tmp_path, reference, rollout, params)
    ref = write_episodes(tmp_path / "ref-stage", reference)
    roll = write_episodes(tmp_path / "roll-stage", rollout)
    with pytest.raises(ValueError, match=flag):
        weights_stage(ref, roll, params, run=RUN, iteration=1, root=tmp_path / "root")
    assert not (tmp_path / "root" / "runs").exists() or not list((tmp_path / "root" / "runs").rglob("*.parquet"))


@pytest.mark.parametrize("corrupt", ["reference", "rollout"])
def test_corrupt_episodes_publish_nothing(tmp_path, corrupt):
    root = tmp_path / "root"
    ref = write_episodes(tmp_path / "reference", [episode_row("reference", 0, s, r) for s, r in enumerate([0, 1])])
    roll = write_episodes(tmp_path / "rollout", [episode_row("rollout", 0, 0, 1.0, iteration=1)])
    (tmp_path / corrupt / "episodes.parquet").write_bytes(b"PAR1 this is not a parquet file \x00\xff" * 10)
    with pytest.raises(ValueError, match="episodes.parquet") as e:  # one line naming the inputs
        weights_stage(ref, roll, WeightsParams(), run=RUN, iteration=1, root=root)
    assert "\n" not in str(e.value)
    assert not [p for p in root.rglob("manifest.json")]
    assert not list(root.rglob("*.parquet"))
    assert not leftovers(root)
    assert not leftovers(tmp_path)


# ---------------------------------------------------------------------------------------------------------
# 4. the stage
# ---------------------------------------------------------------------------------------------------------
OLD = 1_000_000_000  # a file time (2001) no fresh write can have


def age(folder):
    for p in folder.iterdir():
        os.utime(p, (OLD, OLD))


def mtimes(folder) -> dict:
    return {p.name: p.stat().st_mtime for p in folder.iterdir()}


def test_weights_stage(tmp_path):
    root = tmp_path / "root"
    reference, rollout = random_batch(5)
    ref = write_episodes(tmp_path / "reference-abc", reference)
    roll = write_episodes(tmp_path / "rollout-def", rollout)
    params = WeightsParams(beta=0.5)

    with pytest.raises(ValueError, match="not cached"):  # cached_only on a stage never run
        weights_stage(ref, roll, params, run=RUN, iteration=2, root=root, cached_only=True)
    assert not list(root.rglob("manifest.json"))

    folder = weights_stage(ref, roll, params, run=RUN, iteration=2, root=root)
    assert folder.parent == root / "runs" / RUN / "iter=0002" / "weights"
    assert sorted(p.name for p in folder.iterdir()) == ["diagnostics.parquet", "manifest.json", "v_star.parquet",
                                                        "weights.parquet"]
    assert not leftovers(root)
    m = read_manifest(folder)
    assert (m["stage"], m["run"], m["iteration"], m["key"]) == ("weights", RUN, 2, folder.name)
    assert m["params"] == {"beta": 0.5, "adv_clip": 3.0, "format_penalty": 0.0, "adv_norm": "batch",
                           "skip_degenerate": False, "min_reward": 0.0}
    assert m["inputs"] == {"reference": "reference-abc", "rollout": "rollout-def"}
    # the files hold what compute_weights computes
    weights, v_star, diagnostics = compute_weights([ref / "episodes.parquet"], [roll / "episodes.parquet"], params)
    assert read_table(folder / "weights.parquet").equals(weights)
    assert read_table(folder / "v_star.parquet").equals(v_star)
    assert read_table(folder / "diagnostics.parquet").equals(diagnostics)
    s = m["summary"]
    assert (s["episodes"], s["goals"], s["diagnostics"]) == (len(rollout), v_star.num_rows, diagnostics.num_rows)
    assert s["mean_weight"] == pytest.approx(np.mean(weights["weight"].to_pylist()))
    assert s["mean_v_star"] == pytest.approx(np.mean(v_star["v_star"].to_pylist()))

    # skip-if-done: same folder, files untouched, even when the input changed under the same folder name
    age(folder)
    before = mtimes(folder)
    changed = [dict(e, reward=1.0 - e["reward"]) for e in rollout]
    write_episodes(roll, changed)
    assert weights_stage(ref, roll, params, run=RUN, iteration=2, root=root) == folder
    assert mtimes(folder) == before
    assert weights_stage(ref, roll, params, run=RUN, iteration=2, root=root, cached_only=True) == folder
    assert mtimes(folder) == before
    assert read_table(folder / "weights.parquet").equals(weights)

    # another beta: a new folder beside the old one, the old one untouched
    other = weights_stage(ref, roll, WeightsParams(beta=0.1), run=RUN, iteration=2, root=root)
    assert other != folder and other.parent == folder.parent
    assert read_manifest(other)["params"]["beta"] == 0.1
    assert mtimes(folder) == before
    # another iteration: another folder too
    assert weights_stage(ref, roll, params, run=RUN, iteration=3, root=root).parent.parent.name == "iter=0003"

    # force: recomputed in place from the current input
    assert weights_stage(ref, roll, params, run=RUN, iteration=2, root=root, force=True) == folder
    after = mtimes(folder)
    assert set(after) == set(before)
    assert all(after[name] != OLD for name in after)
    want = np_reference(reference, changed, params)[1]
    got = by_key(read_table(folder / "weights.parquet"), "episode_id")
    for eid, w in want.items():
        assert got[eid]["weight"] == pytest.approx(w["weight"], rel=1e-7, abs=1e-7)
        assert got[eid]["reward"] == w["reward"]
    assert not leftovers(root)
    assert pq.read_schema(folder / "weights.parquet").names == [
        "episode_id", "goal_idx", "sample_idx", "reward", "r", "v_star", "advantage", "adv_norm", "weight"]
