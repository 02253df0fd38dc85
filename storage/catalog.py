"""The DuckDB catalogue: views over every run's current tables, for `apo sql` and any DuckDB client.

    episodes       reference, rollout and eval episodes (columns in storage/tables.py)
    turns          their model replies (exact token ids)
    weights        per-episode V*, advantage, weight (+ run, iteration)
    v_star         per-goal V* of each iteration's weights stage (+ run, iteration)
    diagnostics    weights diagnostics (+ run, iteration)
    train_metrics  one row per optimizer step (+ run, iteration)
    eval           one row per evaluation (+ run); iteration 0 is the starting policy (`apo train`)
    evaluations    every evaluation on disk (+ run): the iterations', superseded ones and `apo eval`'s
    iterations     run, iteration and the folders each stage used

"Current" means the folders an iteration's `iteration.json` points to: a replay leaves the superseded
outputs on disk (nothing is overwritten) but the views show what the run now consists of. The views are
rebuilt on every call, into `catalog.duckdb` under the storage root (written aside, then renamed).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import duckdb

from storage.layout import storage_root
from storage.stages import MANIFEST

# view -> (stage folder key in iteration.json, file name)
SOURCES = {
    "weights": ("weights", "weights.parquet"), "v_star": ("weights", "v_star.parquet"),
    "diagnostics": ("weights", "diagnostics.parquet"), "train_metrics": ("train", "train_metrics.parquet"),
    "eval": ("eval", "eval.parquet"),
}


def iteration_records(root: Path) -> list[dict]:
    records = []
    for path in sorted(root.glob("runs/*/iter=*/iteration.json")):
        record = json.loads(path.read_text())
        records.append({**record, "run": path.parent.parent.name})
    return records


def _files(records: list[dict], stage_keys: tuple[str, ...], name: str) -> list[tuple[str, int, str]]:
    """(run, iteration, file) of the current outputs; reference folders are shared across iterations."""
    seen, files = set(), []
    for r in records:
        for key in stage_keys:
            folder = r.get(key)
            if folder and (Path(folder) / name).is_file() and (folder, name) not in seen:
                seen.add((folder, name))
                files.append((r["run"], r["iteration"], str(Path(folder) / name)))
    return files


def _done_evals(root: Path) -> list[Path]:
    """eval.parquet of every finished eval folder: runs/<run>/eval/<key>/ and runs/<run>/iter=<i>/eval/<key>/."""
    found = [*root.glob("runs/*/eval/*/eval.parquet"), *root.glob("runs/*/iter=*/eval/*/eval.parquet")]
    return sorted(p for p in found if (p.parent / MANIFEST).is_file())


def _view(con, view: str, files: list[tuple[str, int, str]], tag: str) -> None:
    """tag: "" (the files carry their own run/iteration), "run", or "run,iteration" columns added."""
    if not files:
        con.execute(f"CREATE VIEW {view} AS SELECT NULL AS run WHERE false")
        return
    # Parquet file lists are literals in the view: DuckDB does not take parameters in CREATE VIEW.
    unions = []
    for run, iteration, path in files:
        source = "read_parquet('" + path.replace("'", "''") + "', hive_partitioning = false)"
        cols = {"": "", "run": f"'{run}' AS run, ",
                "run,iteration": f"'{run}' AS run, {iteration}::INTEGER AS iteration, "}[tag]
        unions.append(f"SELECT {cols}* FROM {source}")
    con.execute(f"CREATE VIEW {view} AS " + " UNION ALL BY NAME ".join(unions))


def build_catalog(root: str | Path | None = None) -> Path:
    """(Re)build catalog.duckdb with the views above; returns its path."""
    root = storage_root(root)
    records = iteration_records(root)
    path = root / "catalog.duckdb"
    tmp = root / ".tmp-catalog.duckdb"
    tmp.unlink(missing_ok=True)
    con = duckdb.connect(str(tmp))
    try:
        _view(con, "episodes", _files(records, ("reference", "rollout", "eval"), "episodes.parquet"), tag="")
        _view(con, "turns", _files(records, ("reference", "rollout", "eval"), "turns.parquet"), tag="")
        for view, (stage, name) in SOURCES.items():
            _view(con, view, _files(records, (stage,), name), tag="run" if view == "eval" else "run,iteration")
        _view(con, "evaluations", [(p.relative_to(root / "runs").parts[0], None, str(p)) for p in _done_evals(root)],
              tag="run")
        rows = [(r["run"], r["iteration"], *(r.get(s) for s in ("reference", "rollout", "weights", "train", "eval")),
                 r["checkpoint"]) for r in records]
        con.execute("CREATE TABLE iterations (run VARCHAR, iteration INTEGER, reference VARCHAR, rollout VARCHAR, "
                    "weights VARCHAR, train VARCHAR, eval VARCHAR, checkpoint VARCHAR)")
        if rows:
            con.executemany("INSERT INTO iterations VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
    finally:
        con.close()
    os.replace(tmp, path)
    return path


def query(sql: str, root: str | Path | None = None):
    """Run one query against a freshly built catalogue; returns (column names, rows)."""
    con = duckdb.connect(str(build_catalog(root)), read_only=True)
    try:
        result = con.sql(sql)
        if result is None:
            return [], []
        return result.columns, result.fetchall()
    except duckdb.Error as e:
        raise ValueError(f"sql: {str(e).splitlines()[0]}") from None
    finally:
        con.close()
