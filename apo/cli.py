"""`apo`: the command line. Each subcommand is a thin wrapper; errors in user input print one line, exit 2.

    apo baseline --policy {rule,oracle} --split test --num-goals 100 [--data DIR]
    apo train [--model M --num-steps N --batch-size B --beta 0.5 ...]    N iterations (Prefect, ephemeral mode)
    apo iteration [--iteration I] [--from-stage train] [config flags]   one iteration (the apo flow)
    apo eval [--checkpoint DIR | --iteration I] [--split test] [--goals 250:500] [--temperature 0] [config flags]
                                                                         one checkpoint's score and success rate
    apo relabel [--checkpoint DIR | --iteration I] [--num-goals 100] [config flags]
                                                                         one DAgger round: the oracle's labels on
                                                                         the checkpoint's own states, fine-tuned
    apo sql "SELECT ..."                                                 query the run tables (DuckDB)
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time

from webshop.catalogue import DataError
from webshop.goals import SPLITS
from webshop.policies import POLICIES, evaluate


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def baseline(args: argparse.Namespace) -> dict:
    from storage.catalogues import open_shop  # imported here: pyarrow is not needed for --help

    start = time.perf_counter()
    shop = open_shop(args.data, args.num_products, args.goal_kind, args.seed, args.home)
    catalogue, goals = shop.catalogue, shop.goals
    load_s = time.perf_counter() - start
    in_split = list(goals.split(args.split))
    if len(in_split) < args.num_goals:
        raise ValueError(f"--num-goals {args.num_goals}: split {args.split!r} of catalogue {catalogue.name} has "
                         f"{len(in_split)} goals ({len(goals)} in all; test = 0-499, eval = 500-1499, "
                         "train = the rest)")
    indices = in_split[:args.num_goals]
    summary = evaluate(shop, args.policy, indices, args.max_episode_steps)
    return {"policy": args.policy, "split": args.split, "catalogue": catalogue.name, "goal_kind": args.goal_kind,
            "seed": args.seed, "load_s": round(load_s, 3), **summary}


def configure_prefect(root: str | None) -> None:
    """Prefect's home under the storage root, telemetry off; set before prefect is imported."""
    from storage.layout import storage_root

    os.environ.setdefault("PREFECT_HOME", str(storage_root(root) / "prefect"))
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "stages")  # stage logs (loss, tokens/s) in the UI
    # A new home's database migrations can take longer than the default 20 s on a busy 2-core machine.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


def train(args: argparse.Namespace) -> dict:
    from apo.config import config_from_args
    from stages.pipeline import check_inputs, run_writer
    config = config_from_args(args)
    check_inputs(config)  # bad input fails before Prefect starts
    with run_writer(config):  # ... and so does a second writer of the run
        configure_prefect(args.output_dir)
        from flows.apo import apo_train

        records = apo_train(config)
    return {"run": args.run, "iterations": len(records),
            "checkpoint": records[-1]["checkpoint"] if records else None}


def iteration(args: argparse.Namespace) -> dict:
    from apo.config import config_from_args
    from stages.pipeline import check_inputs, resolve_iteration, run_writer
    config = config_from_args(args)
    number = resolve_iteration(config, args.iteration, args.from_stage)  # bad input fails before Prefect starts
    check_inputs(config)
    with run_writer(config):
        configure_prefect(args.output_dir)
        from flows.apo import apo

        record = apo(config, number, args.from_stage)
    return {k: record[k] for k in ("iteration", "rollout", "weights", "train", "eval", "checkpoint")}


def _goal_range(text: str) -> tuple[int, int]:
    start, sep, stop = text.partition(":")
    try:
        first, end = int(start), int(stop)
    except ValueError:
        first = end = -1
    if not sep or not 0 <= first < end:
        raise argparse.ArgumentTypeError(f"expected START:STOP goal indices with 0 <= START < STOP, got {text!r}")
    return first, end


def evaluate_checkpoint(args: argparse.Namespace) -> dict:
    from apo.config import config_from_args
    from stages.pipeline import eval_checkpoint
    row = eval_checkpoint(config_from_args(args), args.checkpoint, args.iteration, args.split, args.goals)
    return {k: row[k] for k in ("checkpoint", "split", "goals", "temperature", "n", "score", "score_ci",
                                "success_rate", "success_ci", "folder")}


def relabel(args: argparse.Namespace) -> dict:
    from apo.config import config_from_args
    from stages.pipeline import relabel_checkpoint
    return relabel_checkpoint(config_from_args(args), args.num_goals, args.checkpoint, args.iteration)


def sql(args: argparse.Namespace) -> None:
    from storage.catalog import query
    from storage.layout import existing_root

    skipped: list[str] = []
    columns, rows = query(args.query, existing_root(args.home), skipped)
    for line in skipped:
        print(f"apo sql: left out {line}", file=sys.stderr)
    print("\t".join(columns))
    for row in rows:
        print("\t".join("" if v is None else str(v) for v in row))


def data(args: argparse.Namespace) -> dict:
    from webshop.data_files import check_dir, download

    if args.action == "check":
        return check_dir(args.dir)
    return download(args.dir, args.set)


def _checkpoint_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", default=None,
                        help="checkpoint folder or model name (default: --model, or the run's --iteration)")
    parser.add_argument("--iteration", type=int, default=None,
                        help="the checkpoint of this iteration of --run (0: its reference model)")


def build_parser() -> argparse.ArgumentParser:
    from apo.config import add_config_arguments
    from stages.pipeline import STAGES

    parser = argparse.ArgumentParser(prog="apo", description="A*-PO training of WebShop agents")
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("baseline", help="score a scripted policy (rule or oracle) on a goal split")
    b.add_argument("--policy", choices=sorted(POLICIES), required=True)
    b.add_argument("--split", choices=SPLITS, default="test")
    b.add_argument("--num-goals", type=_positive_int, default=100, help="first N goals of the split")
    b.add_argument("--data", default=None,
                   help="folder with the WebShop data files (default: the generated catalogue, no download)")
    b.add_argument("--num-products", type=_positive_int, default=None,
                   help="first N products (generated default: 300)")
    b.add_argument("--goal-kind", choices=("synthetic", "human"), default="synthetic")
    b.add_argument("--seed", type=int, default=0, help="seeds product prices and goal price caps")
    b.add_argument("--max-episode-steps", type=_positive_int, default=15)
    b.add_argument("--home", default=None, help="storage root (default: $APO_HOME or ./storage_root)")
    b.set_defaults(func=baseline)
    t = sub.add_parser("train", help="run --num-steps A*-PO iterations (resumes an interrupted run)")
    add_config_arguments(t)
    t.set_defaults(func=train)
    it = sub.add_parser("iteration", help="run or replay one iteration (the apo flow)")
    add_config_arguments(it)
    it.add_argument("--iteration", type=_positive_int, default=None,
                    help="iteration number (default: the next one; the last one with --from-stage)")
    it.add_argument("--from-stage", choices=STAGES, default=None,
                    help="recompute this stage and the ones after it; earlier ones must be cached")
    it.set_defaults(func=iteration)
    e = sub.add_parser("eval", help="score one checkpoint on goals of a split (tables under the run)")
    add_config_arguments(e, {"temperature": 0.0})  # greedy unless asked: what the learning curve reports
    e.set_defaults(func=evaluate_checkpoint)
    _checkpoint_arguments(e)
    e.add_argument("--split", choices=SPLITS, default="test", help="test = goals 0-499, eval = 500-1499")
    e.add_argument("--goals", type=_goal_range, default=None, help="START:STOP, goal indices within the split "
                                                                   "(default: the whole split)")
    r = sub.add_parser("relabel", help="one DAgger round: the checkpoint plays training goals greedily, its turns on "
                                       "the goal's item page are relabelled with the oracle's action, and it is "
                                       "fine-tuned on them (--sft-* flags)")
    add_config_arguments(r)
    r.set_defaults(func=relabel)
    _checkpoint_arguments(r)
    r.add_argument("--num-goals", type=_positive_int, default=100,
                   help="training goals played (those just before the --sft-demos demonstrations' goals)")
    d = sub.add_parser("data", help="WebShop's data files: check a folder, or download upstream's files into it")
    d.add_argument("action", choices=("check", "download"))
    d.add_argument("dir", help="the data folder (what --data takes)")
    d.add_argument("--set", choices=("small", "full"), default="small",
                   help="download: the 1,000-product set or the full one (about 1.18M products, 5.7 GB)")
    d.set_defaults(func=data)
    q = sub.add_parser("sql", help="query the run tables: episodes, turns, weights, v_star, diagnostics, "
                                   "train_metrics, eval, iterations")
    q.add_argument("query")
    q.add_argument("--home", default=None, help="storage root (default: $APO_HOME or ./storage_root)")
    q.set_defaults(func=sql)
    return parser


def _exit_on_sigterm(signum, frame) -> None:
    """SIGTERM (`kill`, `timeout`, a scheduler) ends the process as Ctrl-C does, by an exception: `finally`
    blocks and atexit handlers run, so vLLM's EngineCore and worker processes and the temporary Prefect server
    stop with us instead of living on as orphans. Inside a flow run Prefect's own handler takes the signal first,
    marks the run crashed and re-sends it here."""
    raise SystemExit(128 + signum)


# Commands that start child processes (vLLM's engine, the temporary Prefect server).
SPAWNING = ("train", "iteration", "eval", "relabel")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    if argv is None and args.command in SPAWNING:  # the command line (not a call from Python): guard its children
        from apo import watchdog
        watchdog.start()
    try:
        result = args.func(args)
    except (DataError, ValueError, OSError) as e:  # OSError: a missing file, a full disk, a read-only folder
        print(f"apo {args.command}: error: {e}", file=sys.stderr)
        return 2
    if result is not None:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
