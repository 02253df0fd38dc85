"""Upstream's data files: what they are, where upstream's setup gets them, and a check of a folder that reads
each file once, one record at a time (the full `items_shuffle.json` is 5.5 GB: never loaded whole).

    apo data check DIR        counts and fields of every file present (`check_dir`), one JSON line
    apo data download DIR     fetches the files upstream's setup.sh names; offline, one line of what to put where
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from webshop.catalogue import ATTR_FILES, HUMAN_FILE, PROCESSED_FILE, RAW_FILES, RAW_REQUIRED
from webshop.json_stream import DataError, iter_json



@dataclass(frozen=True)
class UpstreamFile:
    name: str
    drive_id: str
    """Google Drive id in upstream's setup.sh (`gdown`)."""
    size: int | None
    """Bytes, where known (../shared/webshop/PROVENANCE.md)."""
    sha256: str | None
    what: str


UPSTREAM_FILES = {f.name: f for f in (
    UpstreamFile("items_shuffle_1000.json", "1EgHdxQ_YxqIQlvvq5iKlCrkEKR6-j0Ib", 4_467_013,
                 "30a4765c3a327af72d9a9a95a6b2486d516f0fa1d3ecd83681901ce82a21b269", "1,000 products (small set)"),
    UpstreamFile("items_ins_v2_1000.json", "1IduG0xl544V_A_jv3tHXC0kyFi7PnyBu", 147_099,
                 "f88a36314a397b53b3d9c3fa5878e5f7b26d35019a51ec83fbedeca61a948f6f", "their attributes and goals"),
    UpstreamFile("items_shuffle.json", "1A2whVgOO0euk5O13n2iYDM0bQRkkRduB", 5_479_720_229, None,
                 "about 1.18 million products (full set)"),
    UpstreamFile("items_ins_v2.json", "1s2j6NgHljiZzQNL3veZaAiyW_qDEgBNi", 186_295_270, None,
                 "their attributes and synthetic goals"),
    UpstreamFile("items_human_ins.json", "14Kb5SPBk_jfdLZ_CDBNitW98QLDlKR5O", 5_137_548,
                 "cf78667548a71786e1d9049c24b802e48e1084ad4bb021cae56ce1f6d96954a3", "human instructions"),
)}
SETS = {"small": ("items_shuffle_1000.json", "items_ins_v2_1000.json", "items_human_ins.json"),
        "full": ("items_shuffle.json", "items_ins_v2.json", "items_human_ins.json")}


def check_dir(data_dir: str | Path) -> dict:
    """What a data folder holds, read record by record: the product file used (upstream's raw files first, as
    `load_dir`), its product count and the ASINs upstream's loader skips, the attribute and human-instruction
    entries. A missing required file or field is a DataError naming the file, the record and the field."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: data folder not found")
    products = next((data_dir / n for n in (*RAW_FILES, PROCESSED_FILE) if (data_dir / n).is_file()), None)
    if products is None:
        raise DataError(f"{data_dir}: no product file (expected one of {', '.join(RAW_FILES + (PROCESSED_FILE,))});"
                        f" `apo data download {data_dir}` says where to get them")
    attrs_path = data_dir / ATTR_FILES[products.name]
    if not attrs_path.is_file():
        raise DataError(f"{attrs_path}: data file not found (the attributes and goals of {products.name})")
    asins, skipped = [], 0
    if products.name == PROCESSED_FILE:
        with products.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                try:
                    asins.append(json.loads(line)["product"]["asin"])
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise DataError(f"{products}: line {lineno} is not a record with product.asin") from None
    else:
        seen = set()
        for i, p in iter_json(products):
            if not isinstance(p, dict):
                raise DataError(f"{products}: product {i} is {type(p).__name__}, expected an object")
            missing = [k for k in RAW_REQUIRED if k not in p]
            if missing:
                raise DataError(f"{products}: product {i} (asin {p.get('asin', '?')}) has no field {missing[0]!r}")
            if p["asin"] == "nan" or len(p["asin"]) > 10 or p["asin"] in seen:
                skipped += 1  # upstream's loader skips these
                continue
            seen.add(p["asin"])
            asins.append(p["asin"])
    attr_asins = {asin for asin, _ in iter_json(attrs_path)}
    human_path = data_dir / HUMAN_FILE
    human = sum(len(v) for _, v in iter_json(human_path)) if human_path.is_file() else None
    return {"dir": str(data_dir), "products_file": products.name, "products": len(asins),
            "skipped_products": skipped, "attributes_file": attrs_path.name, "attribute_entries": len(attr_asins),
            "products_without_attributes": sum(a not in attr_asins for a in asins),
            "human_instructions": human}


DOWNLOAD_URL = "https://drive.usercontent.google.com/download?id={id}&export=download&confirm=t"


def download(data_dir: str | Path, which: str = "small", progress: bool = True) -> dict:
    """Fetch a set's files (`SETS`) from where upstream's setup.sh gets them (Google Drive, by id) into
    `data_dir`. Each file is written under a temporary name and renamed once its size and checksum (where known)
    match, so an interrupted download leaves nothing a loader would read; files already there are kept.
    Without a network, one DataError line says which files to put where."""
    import hashlib
    import os
    import tempfile
    import urllib.request

    from tqdm import tqdm

    data_dir, files = Path(data_dir), [UPSTREAM_FILES[n] for n in SETS[which]]
    try:
        urllib.request.urlopen("https://drive.google.com", timeout=10).close()
    except OSError as e:
        wanted = "; ".join(f"{f.name} ({f.size:,} bytes, Google Drive id {f.drive_id})" for f in files)
        raise DataError(f"cannot reach drive.google.com ({getattr(e, 'reason', e)}): put {wanted} into {data_dir}, "
                        f"then run: apo data check {data_dir}") from None
    data_dir.mkdir(parents=True, exist_ok=True)
    fetched = []
    for f in files:
        target = data_dir / f.name
        if target.is_file() and (f.size is None or target.stat().st_size == f.size):
            continue
        fd, tmp = tempfile.mkstemp(prefix=f".tmp-{f.name}-", dir=data_dir)
        digest = hashlib.sha256()
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(DOWNLOAD_URL.format(id=f.drive_id)) as r, \
                    tqdm(total=f.size, unit="B", unit_scale=True, desc=f.name, disable=not progress) as bar:
                while chunk := r.read(1 << 20):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
            size = Path(tmp).stat().st_size
            if f.size is not None and size != f.size:
                raise DataError(f"{f.name}: downloaded {size:,} bytes, expected {f.size:,} (Google Drive may have "
                                f"sent a page instead of the file); put it into {data_dir} by hand")
            if f.sha256 is not None and digest.hexdigest() != f.sha256:
                raise DataError(f"{f.name}: sha256 {digest.hexdigest()}, expected {f.sha256}")
            os.replace(tmp, target)
        finally:
            Path(tmp).unlink(missing_ok=True)
        fetched.append(f.name)
    return {"dir": str(data_dir), "set": which, "fetched": fetched}
