"""Catalogues as Parquet under the storage root: `catalogues/<name>/products.parquet` and `goals.parquet`.

A loaded catalogue (real data or generated) is stored once; later runs read the Parquet file instead of
re-processing the source, and users can query it (`SELECT category, count(*) FROM products GROUP BY 1`).
`goals.parquet` is written for inspection only: goals are rebuilt from the products (deterministic for a seed).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import pyarrow as pa

from storage.layout import catalogue_dir
from storage.parquet import read_table, write_table
from storage.stages import code_version
import webshop.catalogue
import webshop.generate
from webshop.catalogue import Catalogue, HumanInstruction, Product, load_dir
from webshop.generate import generate_catalogue
from webshop.goals import GoalSet
from webshop.search import SearchEngine

_STR_LIST = pa.list_(pa.string())
PRODUCTS_SCHEMA = pa.schema([
    ("asin", pa.string()), ("title", pa.string()), ("description", pa.string()),
    ("bullet_points", _STR_LIST), ("pricing", pa.list_(pa.float64())), ("price_text", pa.string()),
    ("options", pa.list_(pa.struct([("name", pa.string()), ("values", _STR_LIST)]))),
    ("attributes", _STR_LIST), ("category", pa.string()), ("query", pa.string()),
    ("product_category", pa.string()), ("instruction_text", pa.string()),
    ("instruction_attributes", _STR_LIST),
    ("human_instructions", pa.list_(pa.struct([("instruction", pa.string()),
                                               ("instruction_attributes", _STR_LIST),
                                               ("instruction_options", _STR_LIST)]))),
])
GOALS_SCHEMA = pa.schema([
    ("goal_idx", pa.int32()), ("asin", pa.string()), ("kind", pa.string()), ("instruction_text", pa.string()),
    ("attributes", _STR_LIST), ("goal_options", pa.string()), ("price_upper", pa.float64()),
    ("weight", pa.float64()), ("category", pa.string()), ("query", pa.string()),
])


def products_table(catalogue: Catalogue) -> pa.Table:
    rows = [{
        "asin": p.asin, "title": p.title, "description": p.description, "bullet_points": p.bullet_points,
        "pricing": p.pricing, "price_text": p.price_text,
        "options": [{"name": k, "values": v} for k, v in p.options.items()], "attributes": p.attributes,
        "category": p.category, "query": p.query, "product_category": p.product_category,
        "instruction_text": p.instruction_text, "instruction_attributes": p.instruction_attributes,
        "human_instructions": [{"instruction": h.instruction, "instruction_attributes": h.instruction_attributes,
                                "instruction_options": h.instruction_options} for h in p.human_instructions],
    } for p in catalogue.products]
    return pa.Table.from_pylist(rows, schema=PRODUCTS_SCHEMA)


def catalogue_from_table(name: str, table: pa.Table) -> Catalogue:
    if table.schema != PRODUCTS_SCHEMA:
        raise ValueError(f"catalogue {name}: products table has schema {table.schema.names}, "
                         f"expected {PRODUCTS_SCHEMA.names}")
    products = []
    for r in table.to_pylist():
        r["options"] = {o["name"]: o["values"] for o in r["options"]}
        r["human_instructions"] = [HumanInstruction(**h) for h in r["human_instructions"]]
        products.append(Product(**r))
    return Catalogue(name, products)


def goals_table(goals: GoalSet) -> pa.Table:
    return pa.Table.from_pylist([{
        "goal_idx": i, "asin": g.asin, "kind": g.kind, "instruction_text": g.instruction_text,
        "attributes": g.attributes, "goal_options": json.dumps(g.goal_options), "price_upper": g.price_upper,
        "weight": g.weight, "category": g.category, "query": g.query,
    } for i, g in enumerate(goals.goals)], schema=GOALS_SCHEMA)


def catalogue_name(data: str | Path | None, num_products: int | None, seed: int) -> str:
    """generated-<n>-seed<s>-<hash> or <folder>-<n|all>-<hash>: the hash covers the loader and generator code
    and, for a data folder, its files' names and bytes, so a changed source is never read stale and the same
    data copied in again (new mtimes) keeps every stage cached on it."""
    h = hashlib.sha256()
    for module in (webshop.catalogue, webshop.generate):
        h.update(Path(module.__file__).read_bytes())
    if data is None:
        return f"generated-{num_products or 300}-seed{seed}-{h.hexdigest()[:10]}"
    folder = Path(data).resolve()
    for f in sorted(folder.glob("*.json*")):
        with f.open("rb") as data_file:  # the real small set: ~11 MB, ~10 ms
            h.update(f.name.encode() + hashlib.file_digest(data_file, "sha256").digest())
    return f"{folder.name}-{num_products or 'all'}-{h.hexdigest()[:10]}"


def open_catalogue(data: str | Path | None = None, num_products: int | None = None, seed: int = 0,
                   root: str | Path | None = None) -> Catalogue:
    """The catalogue of a data folder (real WebShop files) or, without one, the generated default.

    Read from `catalogues/<name>/products.parquet` when it is stored; else loaded and stored there.
    """
    name = catalogue_name(data, num_products, seed)
    path = catalogue_dir(name, root) / "products.parquet"
    if path.is_file():
        return catalogue_from_table(name, read_table(path))
    if data is None:
        catalogue = generate_catalogue(num_products or 300, seed)
    else:
        catalogue = load_dir(data, num_products)
    catalogue = Catalogue(name, catalogue.products)
    write_table(products_table(catalogue), path)
    return catalogue


def open_search_index(catalogue: Catalogue, root: str | Path | None = None) -> SearchEngine:
    """The catalogue's BM25 index, built once and kept beside it (`catalogues/<name>/bm25-<code hash>/`, the
    hash of webshop/search.py, so a changed tokenizer or ranking builds anew), then loaded memory-mapped. Built
    in a temporary folder and renamed: a crash leaves no half index, and two first runs both end with one."""
    folder = catalogue_dir(catalogue.name, root) / f"bm25-{code_version('webshop/search.py')[:10]}"
    if not folder.is_dir():
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{folder.name}-", dir=folder.parent))
        try:
            SearchEngine([p.search_text for p in catalogue.products]).save(tmp)
            os.replace(tmp, folder)
        except OSError:
            if not folder.is_dir():  # not a concurrent build that won the rename
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return SearchEngine.load(folder)


def store_goals(catalogue: Catalogue, goals: GoalSet, root: str | Path | None = None) -> Path:
    """Write the goals beside their products once (they are a function of the catalogue and the seed)."""
    path = catalogue_dir(catalogue.name, root) / f"goals-{goals.kind}-seed{goals.seed}.parquet"
    return path if path.is_file() else write_table(goals_table(goals), path)
