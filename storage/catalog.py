"""The DuckDB catalogue: views over every run's current tables, for `apo sql` and any DuckDB client.

    episodes       reference, rollout and eval episodes (columns in storage/tables.py)
    turns          their model replies (exact token ids)
    weights        per-episode V*, advantage, weight (+ run, iteration)
    v_star         per-goal V* of each iteration's weights stage (+ run, iteration)
    diagnostics    weights diagnostics (+ run, iteration)
    train_metrics  one row per optimizer step (+ run, iteration)
    eval           one row per evaluation (+ run); iteration 0 is the starting policy (`apo train`)
    evaluations    every evaluation on disk (+ run): the iterations', superseded ones and `apo eval`'s
    evaluation_episodes, evaluation_turns
                   the episodes and turns of every evaluation on disk (`episodes` holds the current
                   iterations' only): what an `apo eval` did, goal by goal
    iterations     run, iteration and the folders each stage used

"Current" means the folders an iteration's `iteration.json` points to: a replay leaves the superseded
outputs on disk (nothing is overwritten) but the views show what the run now consists of. A query builds the
views in memory (queries at once share no file) and also rewrites `catalog.duckdb` under the storage root for
other DuckDB clients (built in a file of its own, then renamed). A table that cannot be read (truncated,
corrupt) or whose stage folder lost its manifest is left out and named, and every other table still answers.
"""
from __future__ import annotations

import json
import os
import tempfile
from functools import cached_property
from pathlib import Path

import duckdb
import pyarrow.parquet as pq

from storage import remote
from storage.layout import record_as_read, storage_root
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
        record = record_as_read(json.loads(path.read_text()), root)
        records.append({**record, "run": path.parent.parent.name})
    return records


class Views:
    """The views' source files, with what had to be left out: a stage folder without its manifest (a stage that
    did not finish, or whose manifest was deleted) and a table that is not readable Parquet (truncated, corrupt).
    A file left out is named once in `skipped` and every other table still answers."""

    def __init__(self, root: Path):
        self.root, self.skipped, self._checked = root, [], {}
        # A URL root: records are refreshed into the cache; tables the cache lacks are read from the store.
        self.remote = remote.remote_for(root)
        if self.remote:
            remote.pull_records(root / "runs")
        self.records = iteration_records(root)

    def _is_file(self, path: Path) -> bool:
        return path.is_file() or bool(self.remote and self.remote.fs.exists(self.remote.key(path)))

    def source(self, path: Path) -> str:
        """Where DuckDB reads a table: the local file, else (a URL root) the store's object."""
        return str(path) if path.is_file() or not self.remote else f"{self.remote.scheme}://{self.remote.key(path)}"

    def usable(self, path: Path) -> bool:
        """Checked once per file: a table two views read (an evaluation's episodes) is named once."""
        if path not in self._checked:
            self._checked[path] = self._check(path)
        return self._checked[path]

    def _check(self, path: Path) -> bool:
        if not self._is_file(path.parent / MANIFEST):
            self.skipped.append(f"{path}: its stage folder has no {MANIFEST} (not a finished stage)")
            return False
        try:
            if path.is_file() or not self.remote:
                pq.read_schema(path)
            else:
                pq.read_schema(self.remote.key(path), filesystem=self.remote.fs)
        except Exception as e:  # pyarrow raises several types for a truncated or foreign file
            self.skipped.append(f"{path}: not a readable Parquet table ({str(e).splitlines()[0][:120]})")
            return False
        return True

    def files(self, stage_keys: tuple[str, ...], name: str) -> list[tuple[str, int, str]]:
        """(run, iteration, file) of the current outputs; reference folders are shared across iterations."""
        seen, files = set(), []
        for r in self.records:
            for key in stage_keys:
                folder = r.get(key)
                if folder and (folder, name) not in seen and self._is_file(Path(folder) / name):
                    seen.add((folder, name))
                    if self.usable(Path(folder) / name):
                        files.append((r["run"], r["iteration"], self.source(Path(folder) / name)))
        return files

    @cached_property
    def eval_folders(self) -> list[Path]:
        """Every finished eval folder, superseded and `apo eval`'s too, listed once for all the evaluation views:
        runs/<run>/eval/<key>/ (apo eval) and runs/<run>/iter=<i>/eval/<key>/."""
        patterns = (f"runs/*/eval/*/{MANIFEST}", f"runs/*/iter=*/eval/*/{MANIFEST}")
        found = {p.parent for pattern in patterns for p in self.root.glob(pattern)}
        if self.remote:
            base = self.remote.base
            found |= {(self.root / k[len(base) + 1:]).parent for pattern in patterns
                      for k in self.remote.fs.glob(f"{base}/{pattern}")}
        return sorted(found)

    def evals(self, name: str) -> list[tuple[str, None, str]]:
        """Table `name` of every eval folder (`eval_folders`) that has it."""
        return [(f.relative_to(self.root / "runs").parts[0], None, self.source(f / name)) for f in self.eval_folders
                if self._is_file(f / name) and self.usable(f / name)]


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


def view_sources(root: Path) -> tuple[dict[str, tuple[list, str]], list[dict], list[str]]:
    """Found and checked once per query: {view: (files, tag)}, the iteration records, and the files left out."""
    views = Views(root)
    sources = {"episodes": (views.files(("reference", "rollout", "eval"), "episodes.parquet"), ""),
               "turns": (views.files(("reference", "rollout", "eval"), "turns.parquet"), "")}
    for view, (stage, name) in SOURCES.items():
        sources[view] = (views.files((stage,), name), "run" if view == "eval" else "run,iteration")
    sources["evaluations"] = (views.evals("eval.parquet"), "run")
    sources["evaluation_episodes"] = (views.evals("episodes.parquet"), "")
    sources["evaluation_turns"] = (views.evals("turns.parquet"), "")
    return sources, views.records, views.skipped


def create_views(con, sources: dict[str, tuple[list, str]], records: list[dict]) -> None:
    """The views above, and the iterations table, in connection `con`."""
    for view, (files, tag) in sources.items():
        _view(con, view, files, tag)
    rows = [(r["run"], r["iteration"], *(r.get(s) for s in ("reference", "rollout", "weights", "train", "eval")),
             r["checkpoint"]) for r in records]
    con.execute("CREATE TABLE iterations (run VARCHAR, iteration INTEGER, reference VARCHAR, rollout VARCHAR, "
                "weights VARCHAR, train VARCHAR, eval VARCHAR, checkpoint VARCHAR)")
    if rows:
        con.executemany("INSERT INTO iterations VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)


def _connect(root: Path, database: str = ":memory:"):
    """A DuckDB connection; on a URL root it reads the store through fsspec (httpfs cannot be installed offline,
    and a client of catalog.duckdb needs the same filesystem registered)."""
    con = duckdb.connect(database)
    if store := remote.remote_for(root):
        con.register_filesystem(store.fs)
    return con


def build_catalog(root: Path, sources: dict[str, tuple[list, str]], records: list[dict]) -> Path:
    """(Re)build catalog.duckdb (for any DuckDB client) with the views; returns its path. Built in a file of its
    own, then renamed: builders running at once never share a file."""
    path = root / "catalog.duckdb"
    fd, tmp = tempfile.mkstemp(prefix=".tmp-catalog-", suffix=".duckdb", dir=root)
    os.close(fd)
    os.unlink(tmp)  # DuckDB creates the file itself
    con = _connect(root, tmp)
    try:
        create_views(con, sources, records)
    finally:
        con.close()
    os.replace(tmp, path)
    return path


def query(sql: str, root: str | Path | None = None, skipped: list[str] | None = None):
    """Run one query over the views, built in memory for this query (queries at once share no file); returns
    (column names, rows). Files left out are appended to `skipped`."""
    root = storage_root(root)
    sources, records, left_out = view_sources(root)
    if skipped is not None:
        skipped.extend(left_out)
    try:
        build_catalog(root, sources, records)  # kept current for other DuckDB clients
    except OSError as e:  # a read-only root (a snapshot, a read-only mount) still answers
        if skipped is not None:
            skipped.append(f"catalog.duckdb: not refreshed ({e.strerror}); the query runs without it")
    con = _connect(root)
    try:
        create_views(con, sources, records)
        result = con.sql(sql)
        if result is None:
            return [], []
        return result.columns, result.fetchall()
    except duckdb.Error as e:
        raise ValueError(f"sql: {str(e).splitlines()[0]}") from None
    finally:
        con.close()
