"""bench/learning.py's own logic: its commands are what `apo` accepts, paired gains are per-goal differences of
real eval tables, and issue 11's bars are read off the evaluations as the issue states them."""
from __future__ import annotations

import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from apo.cli import build_parser
from bench import learning
from webshop.metrics import Z95, wilson


def test_every_command_of_the_benchmark_is_one_apo_accepts():
    args = learning.build_parser().parse_args(["--seeds", "0,3", "--sft-demo-noise", "0.3", "--train-layers", "10"])
    commands = list(learning.arm_commands(args).values()) + [learning.seed_command(args, 3, "some/checkpoint", 2)]
    for command in commands:
        assert command[1:3] == ["-m", "apo.cli"]
        parsed = build_parser().parse_args(command[3:])
        assert parsed.max_episode_steps == 15 and parsed.eval_goals == 200
        assert parsed.adv_norm == "goal" and parsed.skip_degenerate and parsed.batch_episodes == 8
        assert parsed.train_layers == 10 and not parsed.gradient_checkpointing
        # the weighted-SFT setting: imitate only exact purchases, no KL term
        assert (parsed.min_reward, parsed.kl_coef, parsed.batch_size, parsed.learning_rate) == (1.0, 0.0, 32, 5e-5)
        # apo scores whole episodes: only the weighted-SFT iterations skip no-op replies
        assert parsed.skip_noop_turns == (parsed.objective == "weighted-sft")
        assert parsed.observation_mode == "text" and parsed.v_star_samples == 0  # no apo arm: V* cancels
    seed = build_parser().parse_args(commands[-1][3:])
    assert (seed.command, seed.iteration, seed.seed, seed.model, seed.sft_demos) == \
        ("iteration", 2, 3, "some/checkpoint", 0)
    args = learning.build_parser().parse_args(["--arms", "sft+weighted-sft,sft+apo", "--sft-demo-noise", "0.3"])
    apo = build_parser().parse_args(learning.arm_commands(args)["sft+apo"][3:])
    assert apo.v_star_samples == 4  # the apo arm's V*
    assert apo.reference_run == "learning-wsft" and apo.objective == "apo" and apo.sft_demos == 130
    assert apo.sft_demo_noise == build_parser().parse_args(learning.arm_commands(args)["sft+weighted-sft"][3:]) \
        .sft_demo_noise == 0.3
    # sft+relabel: one DAgger round from the warm start with its SFT settings, then the same evaluation
    relabel = build_parser().parse_args(learning.relabel_command(args, "warm/checkpoint")[3:])
    assert (relabel.command, relabel.checkpoint, relabel.num_goals, relabel.sft_demos, relabel.sft_epochs,
            relabel.sft_batch_episodes, relabel.max_episode_steps, relabel.run) == \
        ("relabel", "warm/checkpoint", 100, 130, 1, 2, 15, "learning-relabel")
    evaluate = build_parser().parse_args(learning.eval_command(args, "learning-relabel", "new/checkpoint")[3:])
    assert (evaluate.command, evaluate.checkpoint, evaluate.goals, evaluate.temperature, evaluate.max_episode_steps,
            evaluate.data) == ("eval", "new/checkpoint", (0, 200), 0.0, 15, "../shared/webshop")


def write_episodes(folder: Path, rewards: dict[int, float]) -> str:
    folder.mkdir(parents=True)
    pq.write_table(pa.table({"goal_idx": list(rewards), "reward": list(rewards.values())}),
                   folder / "episodes.parquet")
    return str(folder)


def test_paired_gain_is_the_mean_per_goal_difference_with_its_interval(tmp_path):
    before = {0: 1.0, 1: 0.5, 2: 0.0, 3: 1.0, 4: 0.25}
    after = {4: 1.0, 3: 1.0, 2: 0.5, 1: 0.5, 0: 0.75, 9: 1.0}  # goal 9 has no pair: left out
    gain = learning.paired_gain(write_episodes(tmp_path / "a", after), write_episodes(tmp_path / "b", before))
    diffs = [after[g] - before[g] for g in before]
    mean = sum(diffs) / len(diffs)
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1))
    assert gain["n"] == 5
    assert gain["score"]["gain"] == pytest.approx(100 * mean, abs=0.01)
    assert gain["score"]["gain_ci"] == pytest.approx(100 * Z95 * sd / math.sqrt(5), abs=0.01)
    assert (gain["score"]["better"], gain["score"]["worse"]) == (sum(d > 0 for d in diffs), sum(d < 0 for d in diffs))
    # success: goal 4 became a purchase that scores 1, goal 0 stopped being one
    assert (gain["success"]["better"], gain["success"]["worse"]) == (1, 1)
    assert gain["success"]["gain"] == 0.0
    # an arm's seeds: per goal the mean of their differences, over the goals every seed played
    other = {0: 1.0, 1: 0.0, 2: 1.0, 3: 1.0}  # goal 4 missing from this seed: left out
    both = learning.paired_gain([str(tmp_path / "a"), write_episodes(tmp_path / "c", other)], str(tmp_path / "b"))
    diffs = [(after[g] + other[g]) / 2 - before[g] for g in range(4)]
    assert both["n"] == 4
    assert both["score"]["gain"] == pytest.approx(100 * sum(diffs) / 4, abs=0.01)
    # success: goal 2 succeeds in one seed of two (+0.5), goal 0 fails in one (-0.5), goal 3 in neither changes
    assert (both["success"]["gain"], both["success"]["better"], both["success"]["worse"]) == (0.0, 1, 1)


def evaluation(successes: int, n: int, score: float) -> dict:
    centre, half = wilson(successes, n)
    return {"n": n, "success_rate": successes / n, "success_centre": centre, "success_ci": half,
            "score": score, "score_ci": 3.0}


def result_with(warm: dict, trained: dict, paired_low: float, success_low: float = 1.0) -> dict:
    curve = [{**warm, "iteration": 0}, {**trained, "iteration": 1}]
    return {"baselines": {"rule": evaluation(5, 200, 57.4)},
            "arms": {"sft+weighted-sft": {"curve": curve, "vs_warm_start": {
                "score": {"gain": paired_low + 4.0, "gain_ci": 4.0},
                "success": {"gain": success_low + 6.0, "gain_ci": 6.0}}}}}


def test_the_bars_are_read_off_the_best_trained_policy_and_every_weighted_sft_run():
    met = learning.done_when(result_with(evaluation(42, 200, 59.1), evaluation(60, 200, 66.0), paired_low=1.0))
    assert met["best_trained"] == "sft+weighted-sft iteration 1"
    assert met["success_interval_above_rule"] and met["success_rate_above_20"] and met["score_above_rule"]
    assert met["success_interval_above_20"] and met["weighted_sft_beats_warm_start_score"]
    assert met["weighted_sft_beats_warm_start_success"]
    # 21% of 200: the rate is above 20% and the interval above the rule's, but the interval reaches below 20%
    close = learning.done_when(result_with(evaluation(42, 200, 59.1), evaluation(38, 200, 66.0), paired_low=-0.5,
                                           success_low=-1.0))
    assert close["best_trained"] == "sft+weighted-sft iteration 0"
    assert close["success_rate_above_20"] and close["success_interval_above_rule"]
    assert not close["success_interval_above_20"] and not close["weighted_sft_beats_warm_start_score"]
    assert not close["weighted_sft_beats_warm_start_success"]
    # more purchases, but as many goals lose score as gain it: the two paired bars are read separately
    split = learning.done_when(result_with(evaluation(42, 200, 59.1), evaluation(60, 200, 66.0), paired_low=-1.0,
                                           success_low=0.4))
    assert split["weighted_sft_beats_warm_start_success"] and not split["weighted_sft_beats_warm_start_score"]
    # as rare as the rule's successes: the interval overlaps the rule's
    low = learning.done_when(result_with(evaluation(6, 200, 50.0), evaluation(7, 200, 56.0), paired_low=2.0))
    assert not low["success_interval_above_rule"] and not low["success_rate_above_20"]
    assert not low["score_above_rule"]
    assert "weighted_sft_seeds_beat_warm_start_success" not in met  # one seed: no pooled bar


def test_with_two_seeds_every_run_and_the_seeds_together_are_read():
    result = result_with(evaluation(94, 200, 71.1), evaluation(102, 200, 74.7), paired_low=-0.6, success_low=-1.9)
    result["arms"]["seed 1"] = {"curve": [{**evaluation(110, 200, 77.0), "iteration": 1}], "vs_warm_start": {
        "score": {"gain": 6.0, "gain_ci": 4.0}, "success": {"gain": 8.0, "gain_ci": 6.0}}}
    result["weighted_sft_seeds_vs_warm_start"] = {"score": {"gain": 4.8, "gain_ci": 3.2},
                                                  "success": {"gain": 6.0, "gain_ci": 4.5}}
    bars = learning.done_when(result)
    assert bars["weighted_sft_runs"] == 2 and bars["best_trained"] == "seed 1 iteration 1"
    assert not bars["weighted_sft_beats_warm_start_success"]  # the first seed's interval reaches below 0
    assert bars["weighted_sft_seeds_beat_warm_start_success"] and bars["weighted_sft_seeds_beat_warm_start_score"]
