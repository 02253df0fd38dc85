"""`apo`: the command line. Each subcommand is a thin wrapper; errors in user input print one line, exit 2.

    apo baseline --policy {rule,oracle} --split test --num-goals 100 [--data DIR]
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from webshop.catalogue import DataError
from webshop.env import Shop
from webshop.goals import SPLITS, build_goals
from webshop.policies import POLICIES, evaluate


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def baseline(args: argparse.Namespace) -> dict:
    from storage.catalogues import open_catalogue, store_goals  # imported here: pyarrow is not needed for --help

    start = time.perf_counter()
    catalogue = open_catalogue(args.data, args.num_products, args.seed, args.home)
    goals = build_goals(catalogue, args.goal_kind, args.seed)
    store_goals(catalogue, goals, args.home)
    shop = Shop(catalogue, goals)
    load_s = time.perf_counter() - start
    indices = list(goals.split(args.split))[: args.num_goals]
    if not indices:
        raise ValueError(f"split {args.split!r} of catalogue {catalogue.name} has no goals "
                         f"({len(goals)} goals in all; test = 0-499, eval = 500-1499, train = the rest)")
    summary = evaluate(shop, args.policy, indices, args.max_episode_steps)
    return {"policy": args.policy, "split": args.split, "catalogue": catalogue.name, "goal_kind": args.goal_kind,
            "seed": args.seed, "load_s": round(load_s, 3), **summary}


def build_parser() -> argparse.ArgumentParser:
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
    b.set_defaults(run=baseline)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = args.run(args)
    except (DataError, ValueError, FileNotFoundError) as e:
        print(f"apo {args.command}: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
