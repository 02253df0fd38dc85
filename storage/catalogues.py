"""Catalogues under the storage root: `catalogues/<name>/products.parquet`, `products.arrow`, `bm25-*/`, goals.

A catalogue (real data or generated) is streamed into storage once, in bounded memory; later runs memory-map
it instead of re-processing the source, and users can query it (`SELECT category, count(*) FROM products
GROUP BY 1`). Its BM25 index is built once beside it. `goals-*.parquet` is written for inspection only: goals
are rebuilt from the products (deterministic for a seed).
"""
from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from storage.files import folder_written_atomically, written_atomically
from storage.layout import catalogue_dir
from storage.parquet import write_table
from storage.stages import code_version
import webshop.catalogue
import webshop.generate
from webshop.catalogue import PRODUCTS_SCHEMA, STRING_LIST, Catalogue, DataError, Product, iter_dir, products_table
from webshop.generate import iter_generated
from webshop.env import Shop
from webshop.goals import GoalSet, build_goals
from webshop.search import SearchEngine

WRITE_BATCH = 10_000  # products per Parquet row group and Arrow record batch
GOALS_SCHEMA = pa.schema([
    ("goal_idx", pa.int32()), ("asin", pa.string()), ("kind", pa.string()), ("instruction_text", pa.string()),
    ("attributes", STRING_LIST), ("goal_options", pa.string()), ("price_upper", pa.float64()),
    ("weight", pa.float64()), ("category", pa.string()), ("query", pa.string()),
])


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


def write_catalogue(products: Iterable[Product], folder: Path, source: str) -> int:
    """Write products once, in one pass of `WRITE_BATCH` rows at a time (memory holds one batch): Parquet
    (`products.parquet`, row groups, for SQL and inspection) and the same rows uncompressed as an Arrow IPC
    file (`products.arrow`, what `open_catalogue` memory-maps: a page reads its product's bytes in place,
    where a Parquet row would cost decoding its whole compressed page). Both are written under temporary
    names and renamed, the Arrow file last: it marks the catalogue complete. `source` names the products' origin
    in errors. Returns the product count."""
    n = 0
    # the Parquet file is renamed into place first, the Arrow file last (context managers exit inside out)
    with written_atomically(folder / "products.arrow") as arrow_tmp, \
            written_atomically(folder / "products.parquet") as parquet_tmp:
        with pq.ParquetWriter(parquet_tmp, PRODUCTS_SCHEMA) as parquet, \
                pa.ipc.new_file(arrow_tmp, PRODUCTS_SCHEMA) as arrow:
            products = iter(products)
            while batch := list(itertools.islice(products, WRITE_BATCH)):
                table = products_table(batch)
                parquet.write_table(table)
                arrow.write_table(table)
                n += len(batch)
        if n == 0:
            raise DataError(f"{source}: no products (expected a JSON list of products)")
    return n


def open_catalogue(data: str | Path | None = None, num_products: int | None = None, seed: int = 0,
                   root: str | Path | None = None) -> Catalogue:
    """The catalogue of a data folder (real WebShop files) or, without one, the generated default.

    The first call streams the source into `catalogues/<name>/` (`write_catalogue`); every call memory-maps
    `products.arrow` from there, so a reload reads the ASIN column and nothing else until a page asks.
    """
    name = catalogue_name(data, num_products, seed)
    folder = catalogue_dir(name, root)
    if not (folder / "products.arrow").is_file():
        if data is None:
            source, products = "generated catalogue", iter_generated(num_products or 300, seed)
        else:
            source, products = iter_dir(data, num_products)
        write_catalogue(products, folder, str(source))
    try:
        table = pa.ipc.open_file(pa.memory_map(str(folder / "products.arrow"))).read_all()
    except (pa.ArrowInvalid, OSError) as e:
        raise ValueError(f"{folder / 'products.arrow'}: not a readable Arrow file ({e}); delete {folder} "
                         "to write the catalogue anew") from None
    return Catalogue(name, table)


def open_search_index(catalogue: Catalogue, root: str | Path | None = None) -> SearchEngine:
    """The catalogue's BM25 index, built once and kept beside it (`catalogues/<name>/bm25-<code hash>/`, the
    hash of webshop/search.py, so a changed tokenizer or ranking builds anew), then loaded memory-mapped. Built
    in a temporary folder and renamed: a crash leaves no half index, and two first runs both end with one."""
    folder = catalogue_dir(catalogue.name, root) / f"bm25-{code_version('webshop/search.py')[:10]}"
    if not folder.is_dir():
        with folder_written_atomically(folder, replace=False) as tmp:
            SearchEngine(catalogue.search_texts()).save(tmp)
    return SearchEngine.load(folder)


def store_goals(catalogue: Catalogue, goals: GoalSet, root: str | Path | None = None) -> Path:
    """Write the goals beside their products once (they are a function of the catalogue and the seed)."""
    path = catalogue_dir(catalogue.name, root) / f"goals-{goals.kind}-seed{goals.seed}.parquet"
    return path if path.is_file() else write_table(goals_table(goals), path)


def open_shop(data: str | Path | None, num_products: int | None, goal_kind: str, seed: int,
              root: str | Path | None = None) -> Shop:
    """Catalogue, goals (stored beside it for inspection) and the stored search index: what a run shops in."""
    catalogue = open_catalogue(data, num_products, seed, root)
    goals = build_goals(catalogue, goal_kind, seed)
    store_goals(catalogue, goals, root)
    return Shop(catalogue, goals, search_engine=open_search_index(catalogue, root))
