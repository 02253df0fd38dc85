"""Where everything lives: one storage root (git-ignored), `$APO_HOME` or `./storage_root`.

    models/<name>/                 converted or trained checkpoints
    catalogues/<name>/             products.parquet (queryable), products.arrow (memory-mapped), goals, bm25 index
    runs/<run>/...                 stage outputs (later issues)
    prefect/                       PREFECT_HOME
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from storage import remote


def storage_root(root: str | Path | None = None) -> Path:
    """The storage root, absolute: an explicit path, else $APO_HOME, else ./storage_root (created on first use).
    Absolute, so every folder under it is too: a folder one stage hands to the next cannot be mistaken for a
    root-relative path as records store them (`from_root` put a relative root in front of it a second time)."""
    path = _root_path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _as_given(root: str | Path | None) -> Path:
    """The storage root as the user spelled it: --home / --output-dir, else $APO_HOME, else ./storage_root. A
    URL (s3://bucket/prefix) is served from its local cache, which publishes to the store (storage/remote.py)."""
    given = root or os.environ.get("APO_HOME") or "storage_root"
    if remote.is_url(str(given)):
        return remote.local_root(str(given))
    return Path(given).expanduser()


def _root_path(root: str | Path | None) -> Path:
    """The storage root as an absolute path (not created, symlinks kept as written)."""
    return Path(os.path.abspath(_as_given(root)))


def root_relative(path: str | Path, root: str | Path | None = None) -> str:
    """`path` as records and stage keys store it: relative to the storage root when inside it, so a moved or
    copied root, or the same root spelled another way (relative, absolute), reads as the original; else absolute.
    Symlinks are not followed: another path to the same model is another input."""
    absolute = Path(os.path.abspath(Path(path).expanduser()))
    try:
        return absolute.relative_to(_root_path(root)).as_posix()
    except ValueError:
        return str(absolute)


def from_root(stored: str, root: str | Path | None = None) -> Path:
    """A path stored by `root_relative`, as a path on this machine (under the root as it is now)."""
    path = Path(stored)
    return path if path.is_absolute() else _root_path(root) / path


# The entries of an iteration record (runs/<run>/iter=<i>/iteration.json) that are paths.
RECORD_PATHS = ("sft", "reference", "rollout", "weights", "train", "eval", "checkpoint")


def record_to_store(record: dict, root: str | Path | None = None) -> dict:
    return {k: root_relative(v, root) if k in RECORD_PATHS and v else v for k, v in record.items()}


def record_as_read(record: dict, root: str | Path | None = None) -> dict:
    return {k: str(from_root(v, root)) if k in RECORD_PATHS and v else v for k, v in record.items()}


def existing_root(root: str | Path | None = None) -> Path:
    """The storage root for a command that only reads: refused when it does not exist (a mistyped --home would
    otherwise answer from a new, empty root)."""
    path = _as_given(root)
    if remote.remote_for(path):  # a URL root: its cache starts empty on a new machine
        path.mkdir(parents=True, exist_ok=True)
    if not path.is_dir():
        raise ValueError(f"storage root {path} does not exist (set --home or $APO_HOME to a root a run wrote)")
    return path


def writable_root(root: str | Path | None = None) -> Path:
    """The storage root for a command that writes (train, iteration, eval): created if missing, and refused in
    one line when it cannot be written (a read-only mount or snapshot, another user's folder), before anything
    starts (Prefect's temporary server, whose home is in the root, would wait 80 s and fail with a traceback)."""
    path = _as_given(root)
    if store := remote.remote_for(path):
        remote.check_writable(store.url)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".tmp-write-probe-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ValueError(f"storage root {path} is not writable ({e.strerror}): a run writes its stages there; "
                         "use another --output-dir") from None
    return path


def catalogue_dir(name: str, root: str | Path | None = None) -> Path:
    return storage_root(root) / "catalogues" / name
