"""Learning benchmark: does training make the agent better on goals it never trained on? (issue 11's protocol)

Run (every stage is cached, so a re-run resumes where it stopped):
    make bench-learning        # = .venv/bin/python -m bench.learning --data ../shared/webshop
    .venv/bin/python -m bench.learning [--arms sft+weighted-sft,sft+apo] [--seeds 0,1,2] [--num-steps 1]
                                       [--sft-demos 130] [--eval-goals 200] [--out bench/results/learning.json]

On the real 1,000-product catalogue with upstream's synthetic goals: training goals come from the train split,
evaluation is greedy on the first `--eval-goals` test goals (0-499) at most 15 steps, the same goals for every
policy, so every comparison is also paired goal by goal:

    rule, oracle        the scripted baselines (webshop.policies), same goals, same step cap
    sft+weighted-sft    `apo train --sft-demos N`: the warm start on N oracle demonstrations (iteration 0, which
                        every other arm shares), then `--num-steps` A*-PO iterations with the seed's
                        weighted-SFT objective; by default it imitates only the exact purchases among 4 samples
                        of 32 training goals, without their replies that changed nothing, in AdamW steps of 8
                        imitated episodes (`--adv-norm goal --skip-degenerate --min-reward 1 --kl-coef 0
                        --skip-noop-turns`, lr 5e-5: chosen on eval-split goals 500-619 against the same
                        iteration without --skip-noop-turns; the seed's rule is `--min-reward 0 --kl-coef 0.02`)
    sft+apo             the same iterations with the paper's least-squares objective, on the same warm start and
                        reference samples (`--reference-run` of the weighted-SFT run)
    sft+relabel         one DAgger round from the warm start (`apo relabel`): it plays `--relabel-goals` training
                        goals greedily, its turns on the goal's item page are relabelled with
                        the oracle's action, and it is fine-tuned on them with the warm start's
                        SFT settings; then `apo eval` on the same test goals (shown as iteration 1)
    base                optional: the embedded base model, then `--base-steps` iterations from it
    seeds               each `--seeds` value after the first replays the weighted-SFT iterations from the same
                        warm start with another seed (other training goals and samples): `apo iteration --model
                        <warm start>`, once per iteration, in a run of its own

The weighted-SFT settings were chosen on eval-split goals 500-619 (`apo eval --split eval`), after earlier ones had
been tried on these test goals (README). Each arm is one `apo train`
process (printed, and stored in the JSON) in ephemeral Prefect mode. Scores are 100 x mean reward with a 95%
normal interval; success rates have a 95% Wilson interval (stages.evaluate, the baselines too); paired gains
are the per-goal differences against the warm start with a 95% normal interval; with several seeds, also the
weighted-SFT arm's over its seeds (`weighted_sft_seeds_vs_warm_start`: per goal, the seeds' mean difference). The
JSON's `done_when` checks issue 11's bars, the paired one for every run and for the seeds together. Output: a
markdown table on stdout, JSON with every number and the wall time of every stage
and of the whole invocation, and a PNG of the curves.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from storage.files import write_json

ARMS = ("base", "sft+weighted-sft", "sft+apo", "sft+relabel")


def iteration_flags(args: argparse.Namespace) -> list[str]:
    """What every A*-PO iteration of the benchmark is run with (the warm start has its own flags)."""
    return ["--data", str(args.data), "--output-dir", str(args.output_dir),
            "--max-episode-steps", str(args.max_episode_steps), "--history-turns", str(args.history_turns),
            "--observation-mode", args.observation_mode,
            "--eval-goals", str(args.eval_goals), "--batch-size", str(args.batch_size),
            "--v-star-samples", str(v_star_samples(args)), "--rollout-samples", str(args.rollout_samples),
            "--batch-episodes", str(args.batch_episodes), "--learning-rate", str(args.learning_rate),
            "--eval-frequency", str(args.eval_frequency), "--adv-norm", args.adv_norm,
            "--min-reward", str(args.min_reward), "--kl-coef", str(args.kl_coef),
            "--train-layers", str(args.train_layers),
            "--skip-degenerate" if args.skip_degenerate else "--no-skip-degenerate",
            "--gradient-checkpointing" if args.gradient_checkpointing else "--no-gradient-checkpointing"]


def v_star_samples(args: argparse.Namespace) -> int:
    """Reference samples per goal: the apo arm's V* needs several; weighted-SFT's goal-normalised weights none
    (V* cancels: no reference pass), batch-normalised ones one."""
    if args.v_star_samples is not None:
        return args.v_star_samples
    if "sft+apo" in args.arms.split(","):
        return 4
    return 0 if args.adv_norm == "goal" else 1


def weighted_sft_flags(args: argparse.Namespace) -> list[str]:
    """What only the weighted-SFT iterations take (apo scores whole episodes and refuses --skip-noop-turns)."""
    return ["--objective", "weighted-sft", "--skip-noop-turns" if args.skip_noop_turns else "--no-skip-noop-turns"]


def sft_flags(args: argparse.Namespace) -> list[str]:
    """The warm start's settings (`apo relabel` fine-tunes with the same)."""
    return ["--sft-demos", str(args.sft_demos), "--sft-epochs", str(args.sft_epochs),
            "--sft-batch-episodes", str(args.sft_batch_episodes), "--sft-learning-rate", str(args.sft_learning_rate),
            "--sft-demo-noise", str(args.sft_demo_noise)]


def arm_commands(args: argparse.Namespace) -> dict[str, list[str]]:
    """One `apo train` command per arm (sft+relabel: `relabel_command`), all with the first seed."""
    common = ["--seed", str(args.seeds[0])] + iteration_flags(args)
    sft = sft_flags(args) + ["--num-steps", str(args.num_steps)]
    apo = [sys.executable, "-m", "apo.cli", "train"]
    return {
        "base": apo + ["--run", f"{args.prefix}-base", "--num-steps", str(args.base_steps)] +
        weighted_sft_flags(args) + common,
        "sft+weighted-sft": apo + ["--run", f"{args.prefix}-wsft"] + weighted_sft_flags(args) + sft + common,
        "sft+apo": apo + ["--run", f"{args.prefix}-apo", "--objective", "apo",
                          "--reference-run", f"{args.prefix}-wsft"] + sft + common,
    }


def seed_command(args: argparse.Namespace, seed: int, warm_start: str, iteration: int) -> list[str]:
    """Weighted-SFT iteration i of another seed from the shared warm start, in a run of its own (a done one is
    reused). No iteration 0: the warm start's evaluation is the first seed's."""
    return [sys.executable, "-m", "apo.cli", "iteration", "--run", f"{args.prefix}-wsft-seed{seed}",
            "--iteration", str(iteration), "--model", warm_start, "--seed", str(seed),
            "--num-steps", str(args.num_steps)] + weighted_sft_flags(args) + iteration_flags(args)


def relabel_command(args: argparse.Namespace, warm_start: str) -> list[str]:
    """One DAgger round from the warm start's checkpoint, in a run of its own."""
    return [sys.executable, "-m", "apo.cli", "relabel", "--run", f"{args.prefix}-relabel", "--checkpoint",
            warm_start, "--num-goals", str(args.relabel_goals), "--seed", str(args.seeds[0])] + sft_flags(args) + \
        iteration_flags(args)


def eval_command(args: argparse.Namespace, run: str, checkpoint: str) -> list[str]:
    """`apo eval` of a checkpoint on the benchmark's test goals (greedy)."""
    return [sys.executable, "-m", "apo.cli", "eval", "--run", run, "--checkpoint", checkpoint, "--goals",
            f"0:{args.eval_goals}"] + iteration_flags(args)


def run_relabel_arm(result: dict, args: argparse.Namespace, warm_start: str) -> dict:
    """sft+relabel: `apo relabel` from the warm start, then `apo eval` of its checkpoint; one curve point."""
    from stages.report import eval_row
    from storage.stages import read_manifest

    start = time.perf_counter()
    relabel = relabel_command(args, warm_start)
    print("$ " + " ".join(relabel), flush=True)
    done = json.loads(subprocess.run(relabel, check=True, stdout=subprocess.PIPE, text=True).stdout.splitlines()[-1])
    evaluate = eval_command(args, f"{args.prefix}-relabel", done["checkpoint"])
    print("$ " + " ".join(evaluate), flush=True)
    folder = json.loads(subprocess.run(evaluate, check=True, stdout=subprocess.PIPE, text=True).stdout
                        .splitlines()[-1])["folder"]
    manifest = {stage: read_manifest(Path(f))["summary"]
                for stage, f in (("relabel", done["relabel"]), ("eval", folder))}
    result["commands"]["sft+relabel"] = [" ".join(c[1:]) for c in (relabel, evaluate)]
    result["arms"]["sft+relabel"] = {
        "run": f"{args.prefix}-relabel", "wall_s": round(time.perf_counter() - start, 1),
        "curve": [{**eval_row(folder), "iteration": 1, "eval": folder}], "labelled_turns": done["labelled_turns"],
        "stage_seconds": {"relabel": manifest["relabel"]["seconds"], "sft": train_seconds(done["sft"]),
                          "eval": manifest["eval"]["seconds"]}}
    return result["arms"]["sft+relabel"]


def train_seconds(folder: str) -> float:
    """A training stage's time: the sum of its steps' (train_metrics.parquet)."""
    import duckdb

    con = duckdb.connect()
    try:
        return round(con.sql("SELECT sum(seconds) FROM read_parquet($p)",
                             params={"p": str(Path(folder) / "train_metrics.parquet")}).fetchall()[0][0], 1)
    finally:
        con.close()


def baselines(args: argparse.Namespace) -> dict[str, dict]:
    """rule and oracle on the evaluation goals, with the trained policies' intervals (webshop/metrics.py)."""
    from storage.catalogues import open_catalogue
    from webshop.env import Shop
    from webshop.goals import build_goals
    from webshop.policies import evaluate

    catalogue = open_catalogue(str(args.data), None, args.seeds[0], args.output_dir)
    shop = Shop(catalogue, build_goals(catalogue, "synthetic", args.seeds[0]))
    goals = list(shop.goals.split("test"))[:args.eval_goals]
    out = {}
    for name in ("rule", "oracle"):
        s = evaluate(shop, name, goals, args.max_episode_steps)
        out[name] = {"n": s["episodes"], "score": s["score"], "score_ci": s["score_ci95"],
                     "success_rate": s["success_rate"], "success_ci": s["success_ci95"],
                     "success_centre": s["success_centre"], "mean_steps": s["mean_steps"]}
    return out


def run_summary(run: str, root: Path, last: int) -> dict:
    """Eval rows and wall time per stage of a finished run up to iteration `last`, from its iteration records
    and stage folders (a run taken further by an earlier invocation keeps its later iterations out of this one)."""
    from stages.report import eval_row
    from storage.layout import record_as_read
    from storage.stages import read_manifest

    records = sorted((record_as_read(r, root) for p in (root / "runs" / run).glob("iter=*/iteration.json")
                      if (r := json.loads(p.read_text()))["iteration"] <= last), key=lambda r: r["iteration"])
    curve, seconds, counted = [], {}, set()
    for r in records:
        if (row := eval_row(r.get("eval"))) is not None:
            curve.append({**row, "iteration": r["iteration"], "eval": r["eval"]})
        for stage in ("sft", "reference", "rollout", "train", "eval"):
            folder = r.get(stage)
            if not folder or folder in counted:
                continue  # every record names the warm start, and a block's iterations share its reference
            counted.add(folder)
            s = train_seconds(folder) if stage in ("sft", "train") else \
                read_manifest(Path(folder))["summary"]["seconds"]
            seconds[stage] = round(seconds.get(stage, 0.0) + s, 1)
    return {"curve": curve, "stage_seconds": seconds, "warm_start": records[0].get("sft") if records else None}


def paired_gain(after: str | list[str], before: str) -> dict:
    """Gain of one evaluation over another on the same goals (greedy, so one episode per goal), in points: the
    mean per-goal difference x 100 of the reward (`score`) and of success (reward 1, `success`), each with its
    95% normal half-width and how many goals got better or worse. Pairing removes the goal-to-goal spread that
    makes the two separate intervals wide. With several `after` evaluations (an arm's seeds), a goal's difference
    is from their mean on it, over the goals all of them played: the arm's gain with the seeds' spread averaged
    in, its interval over goals."""
    import duckdb

    from webshop.metrics import score_ci

    afters = [str(Path(a) / "episodes.parquet") for a in ([after] if isinstance(after, (str, Path)) else after)]
    con = duckdb.connect()
    try:
        rows = con.sql(
            "WITH a AS (SELECT goal_idx, avg(reward) AS reward, avg((reward = 1)::INT) AS success "
            "           FROM read_parquet($a) GROUP BY goal_idx HAVING count(*) = $k) "
            "SELECT a.reward - b.reward, a.success - (b.reward = 1)::INT "
            "FROM a JOIN read_parquet($b) b USING (goal_idx) ORDER BY goal_idx",
            params={"a": afters, "k": len(afters), "b": str(Path(before) / "episodes.parquet")}
        ).fetchall()
    finally:
        con.close()
    out = {"n": len(rows)}
    for k, name in enumerate(("score", "success")):
        diffs = [r[k] for r in rows]
        gain, ci = score_ci(diffs)
        out[name] = {"gain": round(gain, 2), "gain_ci": round(ci, 2),
                     "better": sum(d > 0 for d in diffs), "worse": sum(d < 0 for d in diffs)}
    return out


def done_when(result: dict) -> dict:
    """Issue 11's bars over the evaluated policies: the best trained policy (highest success rate, warm start
    included) has a success interval entirely above the rule's, a success rate above 20% (and whether its whole
    interval is), and a score above the rule's; every weighted-SFT run beats the warm start (paired interval
    above 0, of the score and of the success rate: the issue names neither, both are reported)."""
    rule = result["baselines"]["rule"]
    trained = [(f"{arm} iteration {r['iteration']}", r) for arm, s in result["arms"].items() if arm != "base"
               for r in s["curve"]]
    if not trained:
        return {}
    name, best = max(trained, key=lambda t: (t[1]["success_rate"], t[1]["score"]))
    low = best["success_centre"] - best["success_ci"]
    wsft = [result["arms"][arm]["vs_warm_start"] for arm in weighted_sft_arms(result)]
    pooled = result.get("weighted_sft_seeds_vs_warm_start")
    return {"best_trained": name,
            "success_interval_above_rule": low > rule["success_centre"] + rule["success_ci"],
            "success_rate_above_20": best["success_rate"] > 0.20, "success_interval_above_20": low > 0.20,
            "score_above_rule": best["score"] > rule["score"],
            **{f"weighted_sft_beats_warm_start_{metric}": bool(wsft) and all(
                p[metric]["gain"] - p[metric]["gain_ci"] > 0 for p in wsft) for metric in ("score", "success")},
            "weighted_sft_runs": len(wsft),
            # the arm over its seeds: per goal the seeds' mean gain (paired_gain of all of them)
            **({f"weighted_sft_seeds_beat_warm_start_{metric}":
                pooled[metric]["gain"] - pooled[metric]["gain_ci"] > 0 for metric in ("score", "success")}
               if pooled else {})}


def weighted_sft_arms(result: dict) -> list[str]:
    """The weighted-SFT runs that were compared with the warm start: the arm's first seed and each further one."""
    return [arm for arm, s in result["arms"].items()
            if arm.startswith(("sft+weighted-sft", "seed")) and "vs_warm_start" in s]


def table(result: dict) -> str:
    lines = ["| policy | iteration | n | score (95% CI) | success % (95% Wilson CI) |", "|---|---|---|---|---|"]

    def line(name, it, r):
        lo, hi = 100 * (r["success_centre"] - r["success_ci"]), 100 * (r["success_centre"] + r["success_ci"])
        lines.append(f"| {name} | {it} | {r['n']} | {r['score']:.1f} ± {r['score_ci']:.1f} | "
                     f"{100 * r['success_rate']:.1f} [{max(lo, 0):.1f}, {min(hi, 100):.1f}] |")
    for name, r in result["baselines"].items():
        line(name, "-", r)
    for arm, summary in result["arms"].items():
        for r in summary["curve"]:
            line(arm, r["iteration"], r)
    return "\n".join(lines)


def run_arm(result: dict, name: str, commands: list[list[str]], output_dir: Path, last: int) -> dict:
    """Run an arm's commands in turn (each in its own process), then summarise its run up to iteration `last`."""
    start = time.perf_counter()
    for command in commands:
        print("$ " + " ".join(command), flush=True)
        subprocess.run(command, check=True)
    run = commands[0][commands[0].index("--run") + 1]
    result["commands"][name] = [" ".join(c[1:]) for c in commands]
    result["arms"][name] = {"run": run, "wall_s": round(time.perf_counter() - start, 1),
                            **run_summary(run, output_dir, last)}
    return result["arms"][name]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m bench.learning", description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/webshop"), help="real WebShop data folder")
    ap.add_argument("--output-dir", type=Path, default=Path("storage_root"), help="storage root of the runs")
    ap.add_argument("--prefix", default="learning", help="run names: <prefix>-wsft, -apo, -base, -wsft-seed<s>")
    ap.add_argument("--arms", default="sft+weighted-sft",
                    help=f"comma-separated subset of {', '.join(ARMS)} (sft+apo adds about 4 hours on 2 cores)")
    ap.add_argument("--seeds", type=lambda t: [int(x) for x in t.split(",")], default=[0],
                    help="comma-separated; the first runs the arms, each other one the weighted-SFT iterations "
                         "again from the same warm start")
    ap.add_argument("--sft-demos", type=int, default=130,
                    help="oracle demonstrations of the warm start (130: the measured 47%% warm start)")
    ap.add_argument("--sft-epochs", type=int, default=1)
    ap.add_argument("--sft-batch-episodes", type=int, default=2, help="demonstrations per warm-start step")
    ap.add_argument("--sft-learning-rate", type=float, default=1e-4)
    ap.add_argument("--sft-demo-noise", type=float, default=0.0,
                    help="DART: share of the demonstrations' item-page turns played as a mistake (not imitated)")
    ap.add_argument("--num-steps", type=int, default=1, help="A*-PO iterations after the warm start")
    ap.add_argument("--relabel-goals", type=int, default=100, help="training goals of the sft+relabel arm's round")
    ap.add_argument("--base-steps", type=int, default=3,
                    help="A*-PO iterations from the base model, without a warm start (0: evaluate it only)")
    ap.add_argument("--eval-frequency", type=int, default=1)
    ap.add_argument("--eval-goals", type=int, default=200, help="first N test goals (issue 11: at least 200)")
    ap.add_argument("--batch-size", type=int, default=32, help="training goals per iteration")
    ap.add_argument("--v-star-samples", type=int, default=None,
                    help="reference samples per goal; default 4 with the sft+apo arm (its V*), else 0 under "
                         "--adv-norm goal (V* cancels in the weighted-SFT weights: no reference pass), else 1")
    ap.add_argument("--rollout-samples", type=int, default=4)
    ap.add_argument("--batch-episodes", type=int, default=8,
                    help="episodes per AdamW step of an iteration (without the KL term: imitated episodes)")
    ap.add_argument("--learning-rate", type=float, default=5e-5)
    ap.add_argument("--min-reward", type=float, default=1.0,
                    help="weight 0 below this reward (1: imitate exact purchases only; 0: the seed's weights)")
    ap.add_argument("--kl-coef", type=float, default=0.0, help="weighted-SFT's KL to the reference")
    ap.add_argument("--skip-noop-turns", action=argparse.BooleanOptionalAction, default=True,
                    help="weighted-SFT imitates no reply that changed nothing (invalid, or a re-click)")
    ap.add_argument("--train-layers", type=int, default=0,
                    help="warm start and iterations train only the top N decoder layers (0: all)")
    ap.add_argument("--max-episode-steps", type=int, default=15, help="upstream's and the peers' cap")
    ap.add_argument("--history-turns", type=int, default=0)
    ap.add_argument("--observation-mode", default="text",
                    help="text: the measured 47%% warm start; compact (about 2/3 of the prompt tokens) gave an 18%% "
                         "one on the same demonstrations (README)")
    ap.add_argument("--adv-norm", choices=("batch", "goal"), default="goal")
    ap.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=False,
                    help="off by default: each micro-batch's shared prompt head then runs once (peak 13 GiB "
                         "for the warm start on this CPU)")
    ap.add_argument("--skip-degenerate", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--out", type=Path, default=Path("bench/results/learning.json"))
    return ap


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    if not (args.data / "items_ins_v2_1000.json").is_file():
        sys.exit(f"bench.learning: {args.data} does not hold the real WebShop data (items_ins_v2_1000.json); "
                 "pass --data")
    arms = [a for a in args.arms.split(",") if a]
    if unknown := set(arms) - set(ARMS):
        sys.exit(f"bench.learning: unknown arms {sorted(unknown)}; expected a subset of {', '.join(ARMS)}")
    if (len(args.seeds) > 1 or "sft+relabel" in arms) and "sft+weighted-sft" not in arms:
        sys.exit("bench.learning: --seeds after the first and sft+relabel start from the sft+weighted-sft arm's "
                 "warm start; add it to --arms")
    started = time.perf_counter()
    commands = arm_commands(args)
    from policy.hardware import describe_machine
    result = {"command": "python -m bench.learning " + " ".join(argv if argv is not None else sys.argv[1:]),
              "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": {"description": describe_machine(), "cpu_count": os.cpu_count(),
                          "python": platform.python_version(),
                          "git_commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True,
                                                       text=True).stdout.strip()},
              "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "baselines": baselines(args), "arms": {}, "commands": {}}
    for arm in (a for a in arms if a != "sft+relabel"):
        run_arm(result, arm, [commands[arm]], args.output_dir,
                args.base_steps if arm == "base" else args.num_steps)
    # the weighted-SFT arm's warm start, which sft+relabel and the other seeds start from (checked above)
    warm_start = str(Path(result["arms"]["sft+weighted-sft"]["warm_start"]) / "checkpoint") \
        if "sft+weighted-sft" in arms else None
    if "sft+relabel" in arms:
        run_relabel_arm(result, args, warm_start)
    for seed in args.seeds[1:]:
        run_arm(result, f"seed {seed}", [seed_command(args, seed, warm_start, i)
                                          for i in range(1, args.num_steps + 1)], args.output_dir, args.num_steps)
    # The warm start's evaluation: iteration 0 of the sft arms (they share it).
    warm = next((s["curve"][0] for arm, s in result["arms"].items()
                 if arm.startswith("sft+") and s["curve"] and s["curve"][0]["iteration"] == 0), None)
    for arm, summary in result["arms"].items():
        last = summary["curve"][-1] if summary["curve"] else None
        if warm is not None and arm != "base" and last is not None and last["iteration"] > 0:
            summary["vs_warm_start"] = {"iteration": last["iteration"], **paired_gain(last["eval"], warm["eval"])}
    if len(wsft_arms := weighted_sft_arms(result)) > 1:
        result["weighted_sft_seeds_vs_warm_start"] = {"arms": wsft_arms, **paired_gain(
            [result["arms"][arm]["curve"][-1]["eval"] for arm in wsft_arms], warm["eval"])}
    result["done_when"] = done_when(result)
    result["wall_s"] = round(time.perf_counter() - started, 1)

    from stages.report import plot_curves
    png = plot_curves({arm: s["curve"] for arm, s in result["arms"].items()}, args.out.with_suffix(".png"),
                      result["baselines"], title=f"WebShop (1,000 products), greedy on test goals 0-"
                                                 f"{args.eval_goals - 1}, max {args.max_episode_steps} steps")
    result["png"] = str(png)
    write_json(args.out, result)
    print(table(result))
    for arm, s in result["arms"].items():
        print(f"{arm}: {s['wall_s']:.0f} s wall in this invocation (cached stages are not re-run); "
              f"stage seconds {s['stage_seconds']}; paired vs the warm start {s.get('vs_warm_start', '-')}")
    if "weighted_sft_seeds_vs_warm_start" in result:
        print(f"weighted-SFT over its seeds, paired vs the warm start {result['weighted_sft_seeds_vs_warm_start']}")
    print(f"done_when {result['done_when']}")
    print(f"{result['wall_s']:.0f} s in all; wrote {args.out} and {png}")
    return result


if __name__ == "__main__":
    main()
