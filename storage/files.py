"""Whole-or-nothing writes: a file (`written_atomically`) or a folder (`folder_written_atomically`: a stage's
output, a downloaded stage, a search index, a converted model) is written beside its target under a
`.tmp-<name>-<pid>-<random>` name, then renamed over it, so a reader sees the old one or the new one, never half of
one, and a crash or a full disk leaves the last complete one in place.

A process killed outright (SIGKILL, the OOM killer) runs no cleanup: its pid in the temporary name lets the next
write of the same target remove what it left (`remove_dead_leftovers`), and only once that process is gone."""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)


@contextmanager
def written_atomically(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path` to write; on success it replaces `path`, on an error it is removed.
    The temporary name ends without the target's suffix, so a glob such as `*.parquet` over the folder never
    matches a file still being written (a writer that infers the format from the suffix must be told it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_leftovers(path)
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def folder_written_atomically(folder: str | Path, *, replace: bool = True) -> Iterator[Path]:
    """Yield a temporary folder beside `folder` to fill; on success it becomes `folder`, on an error it is removed.
    A `folder` already there is replaced (`replace`: moved aside under `.old-<name>-<pid>-*`, then removed), or
    kept (`replace=False`: for content that depends only on its name, so a concurrent writer that published
    first wrote the same; ours is dropped)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_leftovers(folder)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{folder.name}-{os.getpid()}-", dir=folder.parent))
    try:
        yield tmp
        if replace and folder.exists():
            old = Path(tempfile.mkdtemp(prefix=f".old-{folder.name}-{os.getpid()}-", dir=folder.parent))
            os.replace(folder, old / folder.name)
            os.replace(tmp, folder)
            shutil.rmtree(old)
        else:
            try:
                os.replace(tmp, folder)
            except OSError:  # renaming onto a folder that is not empty: another writer published first
                if replace or not folder.is_dir():
                    raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # already renamed on success; the partial or losing copy otherwise


def write_json(path: str | Path, obj: dict) -> Path:
    """`obj` as indented JSON, written atomically; values JSON cannot hold (paths, dates) as strings."""
    with written_atomically(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n", encoding="utf-8")
    return Path(path)


def pid_alive(pid) -> bool:
    """Whether a process of this host with that pid is alive (another user's counts as alive)."""
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_dead_leftovers(target: Path) -> list[Path]:
    """Remove the temporary and set-aside copies of `target` (`.tmp-<name>-<pid>-*`, `.old-<name>-<pid>-*`, files
    or folders) whose writer process is gone; returns them. A live writer's copies are left alone."""
    target, removed = Path(target), []
    own = re.compile(rf"\.(?:tmp|old)-{re.escape(target.name)}-(\d+)-[0-9a-z_]+")  # the random part has no dash
    for leftover in [*target.parent.glob(f".tmp-{target.name}-*"), *target.parent.glob(f".old-{target.name}-*")]:
        match = own.fullmatch(leftover.name)
        if match and not pid_alive(int(match.group(1))):
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
            removed.append(leftover)
            log.info("removed %s, left by process %s that is gone", leftover, match.group(1))
    return removed
