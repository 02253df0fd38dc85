"""Upstream's data files read one record at a time (webshop/data_files.py) and `apo data check | download`."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import webshop.data_files as data_files
import webshop.json_stream as json_stream
from conftest import SHARED
from webshop.catalogue import DataError
from webshop.data_files import check_dir
from webshop.json_stream import iter_json

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("chunk", [1, 3, 7, 1 << 20])
def test_iter_json_reads_what_json_load_reads(tmp_path, monkeypatch, chunk):
    """Any chunk size, numbers and strings cut at a chunk's end, nested values, escapes, both top-level kinds."""
    monkeypatch.setattr(json_stream, "CHUNK", chunk)
    values = [1, 22, 333.5, -4e3, "a ] , } [ {", {"k": [1, {"x": None}], "é": "\"q\""}, [], {}, True, False, None]
    array = tmp_path / "a.json"
    array.write_text(" [ " + " ,\n ".join(json.dumps(v) for v in values) + " ] \n", encoding="utf-8")
    assert [v for _, v in iter_json(array)] == values
    assert [i for i, _ in iter_json(array)] == list(range(len(values)))
    obj = tmp_path / "o.json"
    obj.write_text(json.dumps({f"key{i}": v for i, v in enumerate(values)}, indent=1), encoding="utf-8")
    assert dict(iter_json(obj)) == json.loads(obj.read_text(encoding="utf-8"))
    for empty in ("[]", " { } "):
        obj.write_text(empty)
        assert list(iter_json(obj)) == []


def test_iter_json_on_the_real_attribute_file(monkeypatch):
    if not SHARED.is_dir():
        pytest.skip("../shared/webshop not found: the real WebShop data is read from there, never committed")
    monkeypatch.setattr(json_stream, "CHUNK", 4096)
    path = SHARED / "items_ins_v2_1000.json"
    assert dict(iter_json(path)) == json.loads(path.read_text(encoding="utf-8"))


@pytest.mark.parametrize("text, expected", [
    ('[{"asin": "B1"}, {"asin": ', "item 1 is not valid JSON"),
    ('[{"asin": "B1"} {"asin": "B2"}]', "expected ',' or ']' after item 0"),
    ('{"B1" 3}', "expected ':' after key 'B1'"),
    ('"just a string"', "expected a JSON list or object"),
    ("", "expected a JSON list or object, found 'nothing'"),
])
def test_iter_json_malformed_is_one_line(tmp_path, text, expected):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(DataError, match=expected) as e:
        list(iter_json(path))
    assert str(e.value).startswith(str(path)) and "\n" not in str(e.value)


@pytest.fixture(scope="module")
def raw_dir(tmp_path_factory):
    """The real 1,000 products in upstream's raw form (test_catalogue rebuilds them), plus two products that
    upstream's loader skips (a repeated ASIN, 'nan')."""
    if not SHARED.is_dir():
        pytest.skip("../shared/webshop not found: the real WebShop data is read from there, never committed")
    from test_catalogue import raw_product

    records = [json.loads(line) for line in
               (SHARED / "items_shuffle_1000.processed_from_lucene_index.jsonl").read_text().splitlines()]
    products = [raw_product(r) for r in records]
    products += [dict(products[0]), dict(products[1], asin="nan")]
    d = tmp_path_factory.mktemp("raw")
    (d / "items_shuffle_1000.json").write_text(json.dumps(products), encoding="utf-8")
    shutil.copy(SHARED / "items_ins_v2_1000.json", d / "items_ins_v2_1000.json")
    human = {r["id"]: r["product"]["instructions"] for r in records if "instructions" in r["product"]}
    (d / "items_human_ins.json").write_text(json.dumps(human), encoding="utf-8")
    return d


def test_check_dir_counts_what_the_loader_loads(raw_dir):
    from webshop.catalogue import load_dir

    report = check_dir(raw_dir)
    catalogue = load_dir(raw_dir)
    assert report["products_file"] == "items_shuffle_1000.json" and report["products"] == len(catalogue) == 1000
    assert report["skipped_products"] == 2
    assert report["attribute_entries"] == 1000 and report["products_without_attributes"] == 0
    assert report["human_instructions"] == sum(len(p.human_instructions) for p in catalogue.products)


def test_check_dir_on_the_processed_form():
    if not SHARED.is_dir():
        pytest.skip("../shared/webshop not found: the real WebShop data is read from there, never committed")
    report = check_dir(SHARED)
    assert report["products_file"].endswith(".jsonl") and report["products"] == 1000
    assert report["human_instructions"] is None  # no items_human_ins.json there


def test_check_dir_names_the_missing_field(raw_dir, tmp_path):
    products = json.loads((raw_dir / "items_shuffle_1000.json").read_text())
    del products[5]["customization_options"]
    (tmp_path / "items_shuffle_1000.json").write_text(json.dumps(products))
    shutil.copy(raw_dir / "items_ins_v2_1000.json", tmp_path)
    with pytest.raises(DataError, match=r"items_shuffle_1000.json: product 5 \(asin \w+\) has no field "
                                        r"'customization_options'"):
        check_dir(tmp_path)
    (tmp_path / "items_ins_v2_1000.json").unlink()
    with pytest.raises(DataError, match="items_ins_v2_1000.json: data file not found"):
        check_dir(tmp_path)


def _apo(*args):
    return subprocess.run([sys.executable, "-m", "apo.cli", "data", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def test_apo_data_check_prints_one_json_line(raw_dir, tmp_path):
    out = _apo("check", str(raw_dir))
    assert out.returncode == 0, out.stderr
    [line] = out.stdout.strip().splitlines()
    assert json.loads(line) == check_dir(raw_dir)
    out = _apo("check", str(tmp_path))
    assert out.returncode == 2
    assert out.stderr.strip() == f"apo data: error: {tmp_path}: no product file (expected one of " \
                                 "items_shuffle_1000.json, items_shuffle.json, items_shuffle_1000.processed_from_" \
                                 f"lucene_index.jsonl); `apo data download {tmp_path}` says where to get them"


def test_apo_data_download_offline_says_what_to_put_where(tmp_path):
    """No network here: one line naming each file of the set, its size and upstream's Google Drive id."""
    out = _apo("download", str(tmp_path / "full"), "--set", "full")
    assert out.returncode == 2
    [line] = out.stderr.strip().splitlines()
    assert line.startswith("apo data: error: cannot reach drive.google.com")
    for name in data_files.SETS["full"]:
        f = data_files.UPSTREAM_FILES[name]
        assert f"{name} ({f.size:,} bytes, Google Drive id {f.drive_id})" in line
    assert f"into {tmp_path / 'full'}" in line and line.endswith(f"then run: apo data check {tmp_path / 'full'}")
    assert not list((tmp_path / "full").glob("*"))  # nothing half-downloaded
