"""Catalogues as Parquet under the storage root, atomic writes, and the `apo baseline` command."""
import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import storage.catalogues

from storage.catalogues import catalogue_name, open_catalogue
from storage.files import folder_written_atomically, write_json, written_atomically
from storage.parquet import read_table, write_table
from webshop.generate import generate_catalogue

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "webshop"
REPO = Path(__file__).resolve().parents[1]


def test_stored_catalogue_round_trip_is_lossless(tmp_path, monkeypatch):
    """Streamed to Parquet and Arrow in several batches, then memory-mapped: every product comes back."""
    monkeypatch.setattr(storage.catalogues, "WRITE_BATCH", 50)
    catalogue = generate_catalogue(120, seed=3)
    stored = open_catalogue(None, 120, seed=3, root=tmp_path)
    assert list(stored.products) == list(catalogue.products)
    assert [stored.product_at(i) for i in (119, 0, 57)] == [catalogue.products[i] for i in (119, 0, 57)]
    parquet = pq.ParquetFile(next(tmp_path.glob("catalogues/*/products.parquet")))
    assert parquet.metadata.num_row_groups == 3 and parquet.read() == catalogue.table


def test_open_catalogue_stores_once_then_reads_parquet(tmp_path):
    first = open_catalogue(None, 80, seed=1, root=tmp_path)
    stored = list(tmp_path.glob("catalogues/*/products.parquet"))
    assert len(stored) == 1 and stored[0].parent.name == first.name
    mtime = stored[0].stat().st_mtime_ns
    second = open_catalogue(None, 80, seed=1, root=tmp_path)
    assert second.products == first.products
    assert stored[0].stat().st_mtime_ns == mtime  # read, not rewritten
    count = duckdb.sql(f"SELECT count(*) FROM '{stored[0]}'").fetchall()[0][0]
    assert count == 80


def test_catalogue_name_follows_the_data_bytes_not_file_times(tmp_path):
    """Data copied in again (same bytes, new mtimes: how ../shared is provisioned) keeps the name, so every stage
    cached on it stays valid; changed bytes give a new name. Found when a re-provisioned ../shared/webshop
    silently re-ran a whole learning-curve benchmark."""
    data = tmp_path / "webshop"
    data.mkdir()
    (data / "items.json").write_text("[1]")
    name = catalogue_name(data, None, 0)
    os.utime(data / "items.json", ns=(10**9, 10**9))
    assert catalogue_name(data, None, 0) == name
    (data / "items.json").write_text("[2]")
    assert catalogue_name(data, None, 0) != name


def test_real_catalogue_round_trips_through_parquet(tmp_path):
    if not SHARED.is_dir():
        pytest.skip("../shared/webshop not found: the real WebShop data is read from there, never committed")
    loaded = open_catalogue(SHARED, None, root=tmp_path)
    again = open_catalogue(SHARED, None, root=tmp_path)
    assert len(loaded) == 1000 and again.products == loaded.products


def test_write_table_is_atomic_and_leaves_nothing_on_failure(tmp_path):
    path = tmp_path / "t.parquet"
    write_table(pa.table({"x": [1, 2]}), path)
    with pytest.raises(Exception):
        write_table(pa.table({"x": [object()]}), path)  # fails while building: the old table must survive
    assert read_table(path).column("x").to_pylist() == [1, 2]
    assert [p.name for p in tmp_path.iterdir()] == ["t.parquet"]


def test_a_file_is_replaced_whole_or_not_at_all(tmp_path):
    out = tmp_path / "results" / "learning.json"
    write_json(out, {"wall_s": 1.0, "out": out})
    assert out.read_text() == f'{{\n  "wall_s": 1.0,\n  "out": "{out}"\n}}\n'  # paths as strings
    with pytest.raises(OSError):
        with written_atomically(out) as tmp:
            tmp.write_text('{"wall_s": 2')  # half of the new file is on disk, then the disk fails
            assert list(out.parent.glob("*.json")) == [out]  # a reader globbing the folder never sees it
            raise OSError("No space left on device")
    assert json.loads(out.read_text()) == {"wall_s": 1.0, "out": str(out)}  # the last complete file stays
    assert [p.name for p in out.parent.iterdir()] == ["learning.json"]


def test_a_folder_is_replaced_whole_or_kept_when_another_writer_won(tmp_path):
    index = tmp_path / "catalogues" / "bm25-abc"
    with folder_written_atomically(index) as tmp:
        (tmp / "vocab.json").write_text("v1")
        assert not index.exists()  # nothing under the name until the folder is complete
    assert (index / "vocab.json").read_text() == "v1"
    with pytest.raises(OSError):
        with folder_written_atomically(index) as tmp:
            (tmp / "vocab.json").write_text("v2, half")
            raise OSError("No space left on device")
    assert (index / "vocab.json").read_text() == "v1"  # the complete folder stays
    with folder_written_atomically(index) as tmp:  # a rebuild replaces it whole
        (tmp / "ids.npy").write_text("v3")
    assert sorted(p.name for p in index.iterdir()) == ["ids.npy"]
    with folder_written_atomically(index, replace=False) as tmp:  # a second first build: the published one wins
        (tmp / "vocab.json").write_text("v4")
    assert sorted(p.name for p in index.iterdir()) == ["ids.npy"]
    assert [p.name for p in index.parent.iterdir()] == ["bm25-abc"]  # no temporary or set-aside copy left


def test_corrupt_parquet_is_one_clear_line(tmp_path):
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet at all")
    with pytest.raises(ValueError, match="bad.parquet: not a readable Parquet table"):
        read_table(bad)


def _apo(*args, home):
    return subprocess.run([sys.executable, "-m", "apo.cli", *args, "--home", str(home)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def test_baseline_cli_prints_one_json_line(tmp_path):
    out = _apo("baseline", "--policy", "oracle", "--split", "test", "--num-goals", "20", home=tmp_path)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert result["policy"] == "oracle" and result["episodes"] == 20
    assert 0 <= result["success_rate"] <= 1 and 0 <= result["score"] <= 100 and result["episodes_per_s"] > 0


@pytest.mark.parametrize("args, expected", [
    (("baseline", "--policy", "rule", "--data", "/no/such/folder"), "/no/such/folder: data folder not found"),
    (("baseline", "--policy", "rule", "--num-goals", "0"), "expected a positive integer"),
    (("baseline", "--policy", "greedy"), "invalid choice"),
    # played the 100 goals of the generated test split without a word before (issue 13)
    (("baseline", "--policy", "rule", "--num-goals", "100000"), "--num-goals 100000: split 'test' of catalogue"),
])
def test_bad_input_is_one_line(tmp_path, args, expected):
    out = _apo(*args, home=tmp_path)
    assert out.returncode == 2
    assert expected in out.stderr
    assert "Traceback" not in out.stderr


def test_an_empty_product_file_is_refused_not_cached(tmp_path):
    """An empty product list was cached as an empty catalogue (issue 13): one line, and nothing stored."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "items_shuffle_1000.json").write_text("[]")
    (data / "items_ins_v2_1000.json").write_text("{}")
    out = _apo("baseline", "--policy", "rule", "--data", str(data), home=tmp_path / "home")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    [line] = out.stderr.strip().splitlines()
    assert line.endswith("items_shuffle_1000.json: no products (expected a JSON list of products)"), line
    assert not list((tmp_path / "home").glob("catalogues/*/products.parquet"))


# ---------------------------------------------------------------------------------------------------------
# apo sql on a damaged root, and several at once (issue 13)
# ---------------------------------------------------------------------------------------------------------
def _stage(folder: Path, table_rows: list[dict], name: str = "episodes.parquet", manifest: bool = True) -> str:
    from test_weights import write_episodes

    write_episodes(folder, table_rows)
    if name != "episodes.parquet":
        (folder / "episodes.parquet").rename(folder / name)
    if manifest:
        (folder / "manifest.json").write_text("{}")
    return str(folder)


@pytest.fixture
def damaged_root(tmp_path):
    """Iteration 1 of run r: a good rollout (3 episodes), an eval whose episodes table is truncated, and a weights
    folder whose manifest is gone."""
    from test_weights import episode_row

    it = tmp_path / "runs" / "r" / "iter=0001"
    rollout = _stage(it / "rollout" / "k1", [episode_row("rollout", 0, s, 1.0, iteration=1) for s in range(3)])
    evaluation = _stage(it / "eval" / "k2", [episode_row("eval", 0, 0, 0.0, iteration=1)])
    good = (Path(evaluation) / "episodes.parquet").read_bytes()
    (Path(evaluation) / "episodes.parquet").write_bytes(good[:len(good) // 2])
    weights = _stage(it / "weights" / "k3", [episode_row("rollout", 0, 0, 1.0)], "weights.parquet", manifest=False)
    (it / "iteration.json").write_text(json.dumps({"iteration": 1, "rollout": rollout, "eval": evaluation,
                                                   "weights": weights, "checkpoint": "c"}))
    return tmp_path


def test_sql_leaves_out_damaged_tables_and_names_them(damaged_root):
    """A truncated table made every query fail with a traceback, even on other tables; a stage folder without
    its manifest went unnoticed."""
    out = _apo("sql", "SELECT count(*) AS n FROM episodes", home=damaged_root)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["n", "3"]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 2 and "Traceback" not in out.stderr
    assert any("eval/k2/episodes.parquet: not a readable Parquet table" in line for line in lines), lines
    assert any("weights/k3/weights.parquet: its stage folder has no manifest.json" in line for line in lines), lines
    out = _apo("sql", "SELECT count(*) AS n FROM weights", home=damaged_root)
    assert out.returncode == 0 and out.stdout.split() == ["n", "0"]


def test_three_queries_at_once(damaged_root):
    """Two of three concurrent `apo sql` died on catalog.duckdb's lock or its shared temporary file."""
    procs = [subprocess.Popen([sys.executable, "-m", "apo.cli", "sql", "SELECT count(*) AS n FROM episodes",
                               "--home", str(damaged_root)], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    results = [(p.wait(timeout=300), p.stdout.read(), p.stderr.read()) for p in procs]
    assert [(rc, out.split()) for rc, out, _ in results] == [(0, ["n", "3"])] * 3, [err for _, _, err in results]
    assert not list(damaged_root.glob(".tmp-catalog*"))
    with duckdb.connect(str(damaged_root / "catalog.duckdb"), read_only=True) as con:  # for other clients
        assert con.sql("SELECT count(*) FROM episodes").fetchall() == [(3,)]


def test_read_only_commands_refuse_a_root_that_does_not_exist(tmp_path):
    out = _apo("sql", "SELECT 1", home=tmp_path / "typo")
    assert out.returncode == 2
    assert out.stderr.strip() == f"apo sql: error: storage root {tmp_path / 'typo'} does not exist (set --home or " \
                                 "$APO_HOME to a root a run wrote)"
    assert not (tmp_path / "typo").exists()


def test_sql_on_a_read_only_root_answers(damaged_root, read_only):
    """A read-only root (a snapshot of finished runs) gave tracebacks (issue 13): the query runs, and the
    catalog.duckdb it could not refresh is one line."""
    read_only(damaged_root)
    out = _apo("sql", "SELECT count(*) AS n FROM episodes", home=damaged_root)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["n", "3"] and "Traceback" not in out.stderr
    notes = [line for line in out.stderr.strip().splitlines() if "catalog.duckdb" in line]
    assert notes == ["apo sql: left out catalog.duckdb: not refreshed (Read-only file system); the query runs "
                     "without it"] or notes == ["apo sql: left out catalog.duckdb: not refreshed (Permission "
                                                "denied); the query runs without it"], out.stderr


def test_search_index_is_built_once_memory_mapped_and_ranks_as_a_fresh_one(real_shop, tmp_path):
    """Issue 12: the BM25 index is saved beside the catalogue and memory-mapped on load; a loaded index ranks
    every goal's instruction exactly as one built from the products."""
    import numpy as np

    from storage.catalogues import open_search_index

    first = open_search_index(real_shop.catalogue, tmp_path)
    [folder] = (tmp_path / "catalogues" / real_shop.catalogue.name).glob("bm25-*")
    assert (folder / "params.json").is_file() and not list(folder.parent.glob(".tmp-*"))
    built = folder.stat().st_mtime_ns
    again = open_search_index(real_shop.catalogue, tmp_path)
    assert folder.stat().st_mtime_ns == built  # read, not rebuilt
    assert isinstance(again._scores, np.memmap) and isinstance(again._docs, np.memmap)
    queries = [g.instruction_text for g in real_shop.goals.goals]
    assert [again.search(q) for q in queries] == [real_shop.search_engine.search(q) for q in queries]
    assert first.search(queries[0]) == again.search(queries[0])


def test_code_version_is_taken_once_per_process(tmp_path, monkeypatch):
    """A source edit (or `git pull`) during a long `apo train` changed the code hash mid-run, and the run
    recomputed its 95-minute warm start: the hash is now taken once per process, and a new process sees the
    change."""
    import storage.stages as stages

    monkeypatch.setattr(stages, "_PROJECT", tmp_path)
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text("x = 1\n")
    stages.code_version.cache_clear()
    try:
        first = stages.code_version("pkg")
        (tmp_path / "pkg" / "a.py").write_text("x = 2\n")
        assert stages.code_version("pkg") == first  # the same process: the code it started with
        stages.code_version.cache_clear()  # what a new process does
        assert stages.code_version("pkg") != first
    finally:
        stages.code_version.cache_clear()


def test_a_stored_catalogue_is_memory_mapped_and_decoded_only_where_a_page_looks(tmp_path):
    """Issue 12: a reload maps products.arrow instead of reading it into memory, and a search decodes only the
    products of the page it shows (the full catalogue must never become a million Python objects)."""
    from storage.catalogues import open_shop
    from webshop.env import Episode

    open_catalogue(None, 3000, seed=2, root=tmp_path)
    before = pa.total_allocated_bytes()
    shop = open_shop(None, 3000, "synthetic", 2, tmp_path)
    assert pa.total_allocated_bytes() - before < 1 << 20  # the 3,000 products' bytes stay in the mapped file
    catalogue = shop.catalogue
    catalogue._decoded.clear()
    ep = Episode(shop, 0)
    ep.step(f"search[{shop.goal(0).instruction_without_price}]")
    assert len(ep.state.results) == 50
    assert sorted(catalogue._decoded) == sorted(ep.state.results.indices[:10])  # page 1 only
    ep.step("click[next >]")
    assert len(catalogue._decoded) == 20


def test_a_failed_catalogue_write_leaves_nothing_and_the_next_open_writes_it(tmp_path, monkeypatch):
    """A source that fails half-way (a malformed product, a kill) leaves neither table nor temporary file;
    the next open streams it again."""
    from webshop.catalogue import DataError
    from webshop.generate import iter_generated

    monkeypatch.setattr(storage.catalogues, "WRITE_BATCH", 10)

    def failing():
        for i, p in enumerate(iter_generated(40, 5)):
            if i == 25:
                raise DataError("items.json: product 25 (asin X) has no field 'name'")
            yield p

    folder = tmp_path / "catalogues" / "broken"
    with pytest.raises(DataError, match="product 25"):
        storage.catalogues.write_catalogue(failing(), folder, "items.json")
    assert list(folder.iterdir()) == []
    assert storage.catalogues.write_catalogue(iter_generated(40, 5), folder, "items.json") == 40
    assert sorted(f.name for f in folder.iterdir()) == ["products.arrow", "products.parquet"]


def test_products_stay_decoded_up_to_a_bound_and_a_full_cache_still_answers(monkeypatch):
    """The decoded products are bounded (oldest out first); a page asking for products partly evicted by its
    own decoding still gets every one (found by bench.env_scale at 1.18M products: a KeyError)."""
    import webshop.catalogue

    monkeypatch.setattr(webshop.catalogue, "DECODED_PRODUCTS", 5)
    catalogue = generate_catalogue(40, seed=4)
    assert catalogue.products_at([0, 1, 2, 3, 4]) == [catalogue.products[i] for i in range(5)]
    page = catalogue.products_at([0, 10, 11, 12, 13, 14])  # 0 is the oldest: evicted while 10-14 come in
    assert [p.asin for p in page] == [catalogue.products[i].asin for i in (0, 10, 11, 12, 13, 14)]
    assert len(catalogue._decoded) == 5
