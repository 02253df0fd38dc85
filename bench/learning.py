"""Learning-curve benchmark: does training make the agent better on goals it never trained on?

Run (every stage is cached, so a re-run resumes; the defaults follow issue 11's protocol: 200 test goals, at most
15 steps; the last full run, at 50 goals and 6 steps, took about 80 minutes on 2 CPU cores with native bf16):
    .venv/bin/python -m bench.learning [--data ../shared/webshop] [--sft-demos 40] [--num-steps 3]
                                       [--eval-goals 200] [--out bench/results/learning.json]

On the real 1,000-product catalogue with upstream's synthetic goals: training goals come from the train split,
evaluation is greedy on the first `--eval-goals` test goals (0-499), the same goals for every arm:

    rule, oracle        the scripted baselines (webshop.policies), same goals, same step cap
    base                the embedded base model (iteration 0), then `--base-steps` A*-PO iterations from it with
                        no warm start (weighted-SFT objective)
    sft+weighted-sft    `apo train --sft-demos N`: the warm start on oracle demonstrations (iteration 0), then
                        `--num-steps` A*-PO iterations with the weighted-SFT objective
    sft+apo             the same iterations with the paper's least-squares objective, on the same cached warm
                        start and reference samples (`--reference-run` of the weighted-SFT run)

Each arm is one `apo train` command (printed, and stored in the JSON) in its own process, in ephemeral Prefect
mode, so every iteration also publishes its artifacts. Scores are 100 x mean reward with a 95% normal interval;
success rates have a 95% Wilson interval; baselines get the same intervals (stages.evaluate). Output: a
markdown table on stdout, JSON with every number and the wall time of each stage, and a PNG of the curves.
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

ARMS = ("base", "sft+weighted-sft", "sft+apo")


def arm_commands(args: argparse.Namespace) -> dict[str, list[str]]:
    common = ["--data", str(args.data), "--output-dir", str(args.output_dir), "--seed", str(args.seed),
              "--max-episode-steps", str(args.max_episode_steps), "--history-turns", str(args.history_turns),
              "--eval-goals", str(args.eval_goals), "--batch-size", str(args.batch_size),
              "--v-star-samples", str(args.v_star_samples), "--rollout-samples", str(args.rollout_samples),
              "--learning-rate", str(args.learning_rate), "--eval-frequency", str(args.eval_frequency),
              "--adv-norm", args.adv_norm, "--skip-degenerate" if args.skip_degenerate else "--no-skip-degenerate"]
    sft = ["--sft-demos", str(args.sft_demos), "--sft-epochs", str(args.sft_epochs),
           "--sft-batch-episodes", str(args.sft_batch_episodes), "--sft-learning-rate", str(args.sft_learning_rate),
           "--num-steps", str(args.num_steps)]
    apo = [sys.executable, "-m", "apo.cli", "train"]
    return {
        "base": apo + ["--run", f"{args.prefix}-base", "--num-steps", str(args.base_steps)] + common,
        "sft+weighted-sft": apo + ["--run", f"{args.prefix}-wsft", "--objective", "weighted-sft"] + sft + common,
        "sft+apo": apo + ["--run", f"{args.prefix}-apo", "--objective", "apo",
                          "--reference-run", f"{args.prefix}-wsft"] + sft + common,
    }


def baselines(args: argparse.Namespace) -> dict[str, dict]:
    """rule and oracle on the evaluation goals, with the trained policies' intervals (webshop/metrics.py)."""
    from storage.catalogues import open_catalogue
    from webshop.env import Shop
    from webshop.goals import build_goals
    from webshop.policies import evaluate

    catalogue = open_catalogue(str(args.data), None, args.seed, args.output_dir)
    shop = Shop(catalogue, build_goals(catalogue, "synthetic", args.seed))
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
    import duckdb

    from stages.report import eval_row

    records = sorted((r for p in (root / "runs" / run).glob("iter=*/iteration.json")
                      if (r := json.loads(p.read_text()))["iteration"] <= last), key=lambda r: r["iteration"])
    curve, seconds, counted = [], {}, set()
    con = duckdb.connect()
    try:
        for r in records:
            if (row := eval_row(r.get("eval"))) is not None:
                curve.append({**row, "iteration": r["iteration"], "eval": r["eval"]})
            for stage in ("sft", "reference", "rollout", "train", "eval"):
                folder = r.get(stage)
                if not folder or folder in counted:
                    continue  # every record names the warm start, and a block's iterations share its reference
                counted.add(folder)
                if stage in ("sft", "train"):
                    s = con.sql("SELECT sum(seconds) FROM read_parquet($p)",
                                params={"p": str(Path(folder) / "train_metrics.parquet")}).fetchall()[0][0]
                else:
                    s = json.loads((Path(folder) / "manifest.json").read_text())["summary"]["seconds"]
                seconds[stage] = round(seconds.get(stage, 0.0) + s, 1)
    finally:
        con.close()
    return {"curve": curve, "stage_seconds": seconds}


def overlap(a: dict, b: dict) -> dict[str, bool]:
    """Whether the 95% intervals of two evaluations overlap (score: normal; success: Wilson)."""
    s = abs(a["score"] - b["score"]) <= a["score_ci"] + b["score_ci"]
    lo_a, hi_a = a["success_centre"] - a["success_ci"], a["success_centre"] + a["success_ci"]
    lo_b, hi_b = b["success_centre"] - b["success_ci"], b["success_centre"] + b["success_ci"]
    return {"score": s, "success": not (hi_a < lo_b or hi_b < lo_a)}


def paired_gain(after: str, before: str) -> dict:
    """Score gain of one evaluation over another on the same goals (greedy, so one episode per goal): the mean
    per-goal reward difference x 100 with its 95% normal half-width, and how many goals got better or worse.
    Pairing removes the goal-to-goal spread that makes the two separate intervals wide."""
    import duckdb

    from webshop.metrics import score_ci

    con = duckdb.connect()
    try:
        diffs = [d for (d,) in con.sql(
            "SELECT a.reward - b.reward FROM read_parquet($a) a JOIN read_parquet($b) b USING (goal_idx) "
            "ORDER BY goal_idx", params={"a": str(Path(after) / "episodes.parquet"),
                                         "b": str(Path(before) / "episodes.parquet")}).fetchall()]
    finally:
        con.close()
    gain, ci = score_ci(diffs)
    return {"n": len(diffs), "gain": round(gain, 2), "gain_ci": round(ci, 2),
            "better": sum(d > 0 for d in diffs), "worse": sum(d < 0 for d in diffs)}


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


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m bench.learning", description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/webshop"), help="real WebShop data folder")
    ap.add_argument("--output-dir", type=Path, default=Path("storage_root"), help="storage root of the runs")
    ap.add_argument("--prefix", default="learning", help="run names: <prefix>-base, -wsft, -apo")
    ap.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated subset of {', '.join(ARMS)}")
    ap.add_argument("--sft-demos", type=int, default=40)
    ap.add_argument("--sft-epochs", type=int, default=2)
    ap.add_argument("--sft-batch-episodes", type=int, default=4, help="demonstrations per warm-start step")
    ap.add_argument("--sft-learning-rate", type=float, default=1e-4)
    ap.add_argument("--num-steps", type=int, default=3, help="A*-PO iterations after the warm start")
    ap.add_argument("--base-steps", type=int, default=3,
                    help="A*-PO iterations from the base model, without a warm start (0: evaluate it only)")
    ap.add_argument("--eval-frequency", type=int, default=3)
    ap.add_argument("--eval-goals", type=int, default=200, help="first N test goals (issue 11: at least 200)")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--v-star-samples", type=int, default=4)
    ap.add_argument("--rollout-samples", type=int, default=2)
    ap.add_argument("--learning-rate", type=float, default=1e-5)
    ap.add_argument("--max-episode-steps", type=int, default=15, help="upstream's and the peers' cap")
    ap.add_argument("--history-turns", type=int, default=0)
    ap.add_argument("--adv-norm", choices=("batch", "goal"), default="batch")
    ap.add_argument("--skip-degenerate", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("bench/results/learning.json"))
    args = ap.parse_args(argv)
    if not (args.data / "items_ins_v2_1000.json").is_file():
        sys.exit(f"bench.learning: {args.data} does not hold the real WebShop data (items_ins_v2_1000.json); "
                 "pass --data")
    arms = [a for a in args.arms.split(",") if a]
    if unknown := set(arms) - set(ARMS):
        sys.exit(f"bench.learning: unknown arms {sorted(unknown)}; expected a subset of {', '.join(ARMS)}")
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
    for arm in arms:
        command = commands[arm]
        print("$ " + " ".join(command), flush=True)
        start = time.perf_counter()
        subprocess.run(command, check=True)
        run = command[command.index("--run") + 1]
        steps = int(command[command.index("--num-steps") + 1])
        result["arms"][arm] = {"run": run, "wall_s": round(time.perf_counter() - start, 1),
                               **run_summary(run, args.output_dir, steps)}
        result["commands"][arm] = " ".join(command[1:])
    base = result["arms"].get("base", {}).get("curve", [None])[0]
    for arm, summary in result["arms"].items():
        if base is not None and summary["curve"] and summary["curve"][-1]["iteration"] > 0:
            best = max(summary["curve"], key=lambda r: r["score"])
            last = summary["curve"][-1]
            summary["vs_base"] = {"last_iteration": last["iteration"], "overlap_last": overlap(last, base),
                                  "best_iteration": best["iteration"], "overlap_best": overlap(best, base),
                                  "paired_last": paired_gain(last["eval"], base["eval"])}
            summary["vs_iteration_0"] = paired_gain(last["eval"], summary["curve"][0]["eval"])

    from stages.report import plot_curves
    png = plot_curves({arm: s["curve"] for arm, s in result["arms"].items()}, args.out.with_suffix(".png"),
                      result["baselines"], title=f"WebShop (1,000 products), greedy on test goals 0-"
                                                 f"{args.eval_goals - 1}, max {args.max_episode_steps} steps")
    result["png"] = str(png)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    print(table(result))
    for arm, s in result["arms"].items():
        print(f"{arm}: {s['wall_s']:.0f} s wall in this invocation (cached stages are not re-run); "
              f"stage seconds {s['stage_seconds']}; vs base {s.get('vs_base', '-')}; "
              f"last vs iteration 0 (paired) {s.get('vs_iteration_0', '-')}")
    print(f"wrote {args.out} and {png}")
    return result


if __name__ == "__main__":
    main()
