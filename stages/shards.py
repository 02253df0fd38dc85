"""Sharded sampling: a reference, rollout or eval stage split by goal into shards, each a stage of its own, then
merged by a DuckDB step into one folder that the stages after it read as if one engine had played it all.

    runs/<run>/[iter=<i>/]<stage>-shards/<key>/   one shard: episodes.parquet, turns.parquet, manifest.json
    runs/<run>/[iter=<i>/]<stage>/<key>/          the merge: the shards' rows in shard order (+ eval.parquet)

A shard is keyed like any rollout stage (its own requests, parameters, inputs, code), so it can run on any
worker with an engine of its own and reach the others only through the storage root; the merge is keyed by its
shards' keys. Goals are cut into contiguous groups in request order, so the merged rows come in the order the
unsharded stage writes them; the episodes themselves can differ from an unsharded run's, because an engine
samples a batch of prompts together (hf: one random stream per batch).
"""
from __future__ import annotations

import logging
from pathlib import Path

import duckdb
import pyarrow as pa

from stages.rollout import episode_summary
from storage.parquet import write_table
from storage.stages import code_version, read_manifest, reuse_done, stage_dir, stage_key, stage_output
from storage.tables import EPISODES_SCHEMA, TURNS_SCHEMA

log = logging.getLogger(__name__)
MERGE_SQL = Path(__file__).with_name("merge_shards.sql")
SUMMED = ("goals", "episodes", "turns", "seconds")  # per-shard summary counts that add up


def split_requests(requests: list[tuple[int, int]], shards: int) -> list[list[tuple[int, int]]]:
    """The requests of each shard: the goals, in request order, cut into `shards` contiguous groups as equal as
    they divide (sizes differ by at most one); fewer shards than asked when there are fewer goals."""
    if shards < 1:
        raise ValueError(f"--shards must be >= 1, got {shards}")
    goals = list(dict.fromkeys(g for g, _ in requests))
    n = min(shards, len(goals))
    groups = [goals[len(goals) * s // n:len(goals) * (s + 1) // n] for s in range(n)]
    shard_of = {g: s for s, group in enumerate(groups) for g in group}
    out: list[list[tuple[int, int]]] = [[] for _ in range(n)]
    for request in requests:
        out[shard_of[request[0]]].append(request)
    return out


def merge_stage(shards: list[Path], *, run: str, stage: str, iteration: int | None, root=None,
                force: bool = False, cached_only: bool = False, extra_tables=None) -> Path:
    """Merge done shard folders (in shard order) into the stage's folder; `extra_tables(episode_rows)` adds
    tables computed over all of them (eval's summary). Returns the folder."""
    manifests = [read_manifest(folder) for folder in shards]
    missing = [str(f) for f, m in zip(shards, manifests) if m is None]
    if missing:
        raise ValueError(f"{stage}: shards not done, nothing merged: {', '.join(missing)}")
    keys = [m["key"] for m in manifests]
    key_params = {"stage": stage, "shards": keys}
    key = stage_key(key_params, {}, code_version("stages/shards.py", "stages/merge_shards.sql", "storage/tables.py"))
    folder = stage_dir(run, stage, key, iteration, root)
    if reuse_done(folder, stage, force, cached_only):
        return folder
    con = duckdb.connect()  # one connection for the merge
    try:
        episodes, turns = (_merged(con, [f / name for f in shards], schema)
                           for name, schema in (("episodes.parquet", EPISODES_SCHEMA), ("turns.parquet", TURNS_SCHEMA)))
    except duckdb.Error as e:  # a shard's table missing or corrupt: one line naming the shards
        raise ValueError(f"{stage}: merging shards {[str(f) for f in shards]}: {str(e).splitlines()[0]}") from None
    finally:
        con.close()
    rows = episodes.to_pylist()
    manifest = {"stage": stage, "run": run, "iteration": iteration, "key": key, "params": key_params,
                "inputs": {**manifests[0]["inputs"], "shards": [str(f) for f in shards]},
                "summary": _summary([m["summary"] for m in manifests], rows)}
    with stage_output(folder, manifest) as tmp:
        write_table(episodes, tmp / "episodes.parquet")
        write_table(turns, tmp / "turns.parquet")
        for name, table in (extra_tables(rows) if extra_tables else {}).items():
            write_table(table, tmp / f"{name}.parquet")
    log.info("%s: %d shards merged, %d episodes (shard engine seconds %s) -> %s", stage, len(shards), len(rows),
             manifest["summary"]["shard_seconds"], folder)
    return folder


def _merged(con: duckdb.DuckDBPyConnection, files: list[Path], schema: pa.Schema) -> pa.Table:
    table = con.sql(MERGE_SQL.read_text(), params={"files": [str(f) for f in files]}).to_arrow_table()
    return table.select(schema.names).cast(schema)


def _summary(shards: list[dict], episodes: list[dict]) -> dict:
    """The shards' summaries as one: counts, seconds (engine time, not wall time) and engine counters summed, the
    rest recomputed over all episodes."""
    engine: dict[str, float] = {}
    for s in shards:
        for k, v in s.get("engine_stats", {}).items():
            engine[k] = engine.get(k, 0.0) + v
    return {**{k: sum(s[k] for s in shards) for k in SUMMED}, "shards": len(shards), "engine": shards[0]["engine"],
            **episode_summary(episodes, engine), "shard_seconds": [s["seconds"] for s in shards]}
