"""The environment at scale: the generated catalogue at 1k, 100k and 1.18M products (the full WebShop's size).

Run:
    .venv/bin/python -m bench.env_scale [--sizes 1000,100000,1180000] [--root DIR] [--out bench/results/env_scale.json]

Each size runs in two fresh child processes, each pinned to one core with one BLAS thread (as `bench.env`):
  first   streams the seeded generated catalogue into a new storage root (`storage.catalogues.open_shop`:
          Parquet + memory-mappable Arrow, BM25 index, human goals); times each part; peak RSS of the process.
  cached  opens the same stored shop again (catalogue and index memory-mapped, goals rebuilt): the reload time
          and peak RSS; then, on that shop,
            search  p50/p99 per query (tokenising included) over the instructions of the human test goals
                    (0-499), price clause cut, as an agent would type them;
            steps   env steps/s excluding buys, `bench.env.bench_steps`' seeded random valid-action policy on
                    the human goals (no HTML baseline here);
            rewards `get_reward` calls/s on the first 500 human goals' own products, the first pass (titles not
                    yet parsed) and a second one (cached).
The ratio column divides each size's number by the 1,000-product number of the same run (per-operation cost
growth with catalogue size; 1.0 = no growth). Upstream's published costs for the full catalogue are quoted
beside (not measured here: upstream needs Java and Pyserini): about 10 minutes to load (its README, issue 12),
30-90 s and about 15 GB RAM (THUDM/AgentBench#32). Generated products are shorter than real ones (about 33
indexed words against a few hundred), so the real catalogue's index is larger and its searches slower.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from storage.files import write_json

GOALS = {"first_load_s": 600, "peak_rss_gib": 8, "reload_s": 30, "search_p50_ms": 20, "search_p99_ms": 100,
         "steps_per_s": 1000}
UPSTREAM = {"first_load_s": "~600 (Pyserini, full set)", "peak_rss_gib": "~15 (AgentBench#32)",
            "reload_s": "30-90 (AgentBench#32)"}


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def child_first(size: int, root: Path) -> dict:
    from storage.catalogues import open_catalogue, open_search_index, store_goals
    from webshop.goals import build_goals

    t0 = time.perf_counter()
    catalogue = open_catalogue(None, size, 0, root)
    t1 = time.perf_counter()
    open_search_index(catalogue, root)
    t2 = time.perf_counter()
    goals = build_goals(catalogue, "human", 0)
    store_goals(catalogue, goals, root)
    t3 = time.perf_counter()
    folder = root / "catalogues" / catalogue.name
    disk = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    return {"catalogue_write_s": t1 - t0, "index_build_s": t2 - t1, "goals_s": t3 - t2, "first_load_s": t3 - t0,
            "human_goals": len(goals), "disk_mib": disk / 2**20, "peak_rss_gib": _peak_rss_gib()}


def child_cached(size: int, root: Path, episodes: int, seed: int) -> dict:
    import numpy as np

    from bench.env import bench_steps
    from storage.catalogues import open_shop
    from webshop import reward

    t0 = time.perf_counter()
    shop = open_shop(None, size, "human", 0, root)
    reload_s = time.perf_counter() - t0
    reload_rss = _peak_rss_gib()
    queries = [g.instruction_without_price for g in shop.goals.goals[:500]]
    lat = []
    for q in queries:
        t = time.perf_counter_ns()
        shop.search_engine.search(q)
        lat.append((time.perf_counter_ns() - t) / 1e6)
    steps = bench_steps(shop, episodes, seed, html_stride=0)
    reward.load_tagger()
    calls = [(shop.catalogue.product(g.asin), g, shop.goals.product_prices[g.asin]) for g in shop.goals.goals[:500]]
    passes = []
    for _ in range(2):
        t = time.perf_counter()
        for product, goal, price in calls:
            reward.get_reward(product, goal, price, {})
        passes.append(len(calls) / (time.perf_counter() - t))
    return {"reload_s": reload_s, "reload_peak_rss_gib": reload_rss, "queries": len(queries),
            "search_p50_ms": float(np.percentile(lat, 50)), "search_p99_ms": float(np.percentile(lat, 99)),
            "steps_per_s": steps["ours_steps_per_s"], "step_p99_us": steps["ours_step_p99_us"],
            "steps": steps["steps_excl_buys"], "buy_steps_per_s": steps["buy_steps_per_s"],
            "rewards_per_s_first": passes[0], "rewards_per_s_cached": passes[1], "peak_rss_gib": _peak_rss_gib()}


def _child(kind: str, size: int, root: Path, args) -> dict:
    cmd = [sys.executable, "-m", "bench.env_scale", "--child", kind, "--sizes", str(size), "--root", str(root),
           "--episodes", str(args.episodes), "--seed", str(args.seed)]
    print(f"[bench.env_scale] {size:,} products: {kind} ...", file=sys.stderr, flush=True)
    env = {**os.environ, **{v: "1" for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}}
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if out.returncode:
        raise SystemExit(f"bench.env_scale: {kind} at {size} products failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(results: dict) -> str:
    sizes = sorted(results, key=int)
    base = results[sizes[0]]
    rows = [("first load (write + index + goals)", "first_load_s", "s", "first"),
            ("  catalogue write", "catalogue_write_s", "s", "first"), ("  index build", "index_build_s", "s", "first"),
            ("peak memory, first load", "peak_rss_gib", "GiB", "first"),
            ("cached reload", "reload_s", "s", "cached"), ("peak memory, reload", "reload_peak_rss_gib", "GiB", "cached"),
            ("search p50", "search_p50_ms", "ms", "cached"), ("search p99", "search_p99_ms", "ms", "cached"),
            ("env steps/s excl. buys, 1 core", "steps_per_s", "/s", "cached"),
            ("rewards/s, first pass", "rewards_per_s_first", "/s", "cached"),
            ("rewards/s, cached titles", "rewards_per_s_cached", "/s", "cached")]
    head = "| measure | " + " | ".join(f"{int(s):,}" for s in sizes) + f" | ratio {int(sizes[-1]):,} / {int(sizes[0]):,} | goal at full size | upstream (published) |"
    lines = [head, "|" + "---|" * (len(sizes) + 4)]
    for label, key, unit, part in rows:
        values = [results[s][part][key] for s in sizes]
        goal = GOALS.get(key.replace("reload_peak_rss_gib", "peak_rss_gib"))
        if goal is None:
            goal_text = ""
        else:
            met = values[-1] >= goal if key == "steps_per_s" else values[-1] < goal
            goal_text = f"{'>=' if key == 'steps_per_s' else '<'} {goal:,} {unit}: {'met' if met else 'MISSED'}"
        ratio = values[-1] / base[part][key] if base[part][key] else float("nan")
        fmt = (lambda v: f"{v:,.0f}") if unit == "/s" else (lambda v: f"{v:,.2f}")
        lines.append(f"| {label} | " + " | ".join(f"{fmt(v)} {unit}" for v in values)
                     + f" | {ratio:.2f}x | {goal_text} | {UPSTREAM.get(key, '')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m bench.env_scale", description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1000,100000,1180000", help="catalogue sizes, comma-separated")
    ap.add_argument("--root", type=Path, default=None,
                    help="storage root for the catalogues (default: a temporary folder, removed after)")
    ap.add_argument("--out", type=Path, default=Path("bench/results/env_scale.json"))
    ap.add_argument("--episodes", type=int, default=1000, help="random-policy episodes per size")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--child", choices=("first", "cached"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.child:
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core, as bench.env
        result = (child_first(sizes[0], args.root) if args.child == "first"
                  else child_cached(sizes[0], args.root, args.episodes, args.seed))
        print(json.dumps(result))
        return result
    from bench.env import machine_info

    root = args.root or Path(__import__("tempfile").mkdtemp(prefix="env-scale-"))
    started = time.perf_counter()
    results = {}
    try:
        for size in sizes:
            shutil.rmtree(root / "catalogues", ignore_errors=True)  # a first load is a first load
            results[str(size)] = {"first": _child("first", size, root, args),
                                  "cached": _child("cached", size, root, args)}
    finally:
        if args.root is None:
            shutil.rmtree(root, ignore_errors=True)
    res = {"command": " ".join([Path(sys.executable).name, "-m", "bench.env_scale"] + sys.argv[1:]),
           "when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "machine": machine_info(), "cpu_flags_bf16": "avx512_bf16" in Path("/proc/cpuinfo").read_text(),
           "results": results, "goals": GOALS, "upstream_published": UPSTREAM,
           "total_seconds": round(time.perf_counter() - started, 1)}
    res["table"] = table(results)
    write_json(args.out, res)
    print(res["table"])
    print(f"\n{res['total_seconds']} s; JSON: {args.out}")
    return res


if __name__ == "__main__":
    main()
