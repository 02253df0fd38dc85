"""Atomic Parquet I/O: a table is written to a temporary file beside its target, then renamed into place,
so a reader never sees a half-written table (a crash leaves only a `.tmp-*` file, which readers ignore)."""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from storage.files import written_atomically


def write_table(table: pa.Table, path: str | Path) -> Path:
    with written_atomically(path) as tmp:
        pq.write_table(table, tmp)
    return Path(path)


def read_table(path: str | Path) -> pa.Table:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: table not found")
    try:
        return pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise ValueError(f"{path}: not a readable Parquet table ({e})") from None
