"""Where everything lives: one storage root (git-ignored), `$APO_HOME` or `./storage_root`.

    models/<name>/                 converted or trained checkpoints
    catalogues/<name>/             products.parquet, goals.parquet (a loaded catalogue, queryable)
    runs/<run>/...                 stage outputs (later issues)
    prefect/                       PREFECT_HOME
"""
from __future__ import annotations

import os
from pathlib import Path


def storage_root(root: str | Path | None = None) -> Path:
    """The storage root: an explicit path, else $APO_HOME, else ./storage_root (created on first use)."""
    path = Path(root or os.environ.get("APO_HOME") or "storage_root").expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def existing_root(root: str | Path | None = None) -> Path:
    """The storage root for a command that only reads: refused when it does not exist (a mistyped --home would
    otherwise answer from a new, empty root)."""
    path = Path(root or os.environ.get("APO_HOME") or "storage_root").expanduser()
    if not path.is_dir():
        raise ValueError(f"storage root {path} does not exist (set --home or $APO_HOME to a root a run wrote)")
    return path


def catalogue_dir(name: str, root: str | Path | None = None) -> Path:
    return storage_root(root) / "catalogues" / name
