"""Catalogues as Parquet under the storage root, atomic writes, and the `apo baseline` command."""
import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from storage.catalogues import catalogue_from_table, catalogue_name, open_catalogue, products_table
from storage.parquet import read_table, write_table
from webshop.generate import generate_catalogue

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "webshop"
REPO = Path(__file__).resolve().parents[1]


def test_products_parquet_round_trip_is_lossless():
    catalogue = generate_catalogue(120, seed=3)
    back = catalogue_from_table(catalogue.name, products_table(catalogue))
    assert back.products == catalogue.products


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
])
def test_bad_input_is_one_line(tmp_path, args, expected):
    out = _apo(*args, home=tmp_path)
    assert out.returncode == 2
    assert expected in out.stderr
    assert "Traceback" not in out.stderr
