"""Stage outputs: where they live, how they are keyed, when they count as done.

    runs/<run>/reference/<key>/             (once per run: A*-PO stage 1)
    runs/<run>/iter=0003/<stage>/<key>/      (rollout, weights, train, eval of one iteration)

`<key>` hashes the stage's parameters, its inputs' keys and the source of the code that computes it, so a
changed parameter, input or helper gives a new folder beside the old one; nothing is overwritten. A stage is
done when its folder holds `manifest.json`. Outputs are written into a temporary folder that is renamed into
place with the manifest already inside, so a crash never leaves a folder that looks done.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
from contextlib import contextmanager
from pathlib import Path

from storage import remote
from storage.faults import fault_point
from storage.files import folder_written_atomically
from storage.layout import storage_root

log = logging.getLogger("stages")  # stage progress is reported under the stages logger (INFO)
MANIFEST = "manifest.json"
_PROJECT = Path(__file__).resolve().parent.parent


@functools.cache
def code_version(*parts: str) -> str:
    """Hash of the source files under the given project-relative packages or files (.py and .sql), taken once
    per process: a command's stages are keyed by the code it started with, so editing or pulling the source while
    `apo train` runs does not make it recompute stages it already did (its warm start did, mid-run)."""
    h = hashlib.sha256()
    for part in parts:
        path = _PROJECT / part
        files = sorted(p for p in path.rglob("*") if p.suffix in (".py", ".sql")) if path.is_dir() else [path]
        for f in files:
            h.update(str(f.relative_to(_PROJECT)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:12]


def stage_key(params: dict, inputs: dict[str, str], code: str) -> str:
    blob = json.dumps({"params": params, "inputs": inputs, "code": code}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def stage_dir(run: str, stage: str, key: str, iteration: int | None = None, root: str | Path | None = None) -> Path:
    base = storage_root(root) / "runs" / run
    return (base / stage if iteration is None else base / f"iter={iteration:04d}" / stage) / key


def read_manifest(folder: Path) -> dict | None:
    path = Path(folder) / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else None


def reuse_done(folder: Path, stage: str, force: bool, cached_only: bool) -> bool:
    """Whether the stage's output in `folder` is reused as it is (done and not forced). A stage that is not
    done is an error with `cached_only` (a replay must not compute it); otherwise the caller computes it."""
    done = read_manifest(folder) is not None or (not force and remote.pull_stage(folder))
    if done and not force:
        remote.ensure_pushed(folder)  # a URL root: an upload that failed before is made now
        log.info("%s: done already (%s), skipped", stage, folder)
        return True
    if cached_only and not done:
        raise ValueError(f"the {stage} stage is not cached ({folder}): run the iteration without from_stage "
                         "first, or replay from an earlier stage")
    fault_point(f"{stage}:start")
    return False


@contextmanager
def stage_output(folder: Path, manifest: dict):
    """Yield a temporary folder to write the stage's files into; on success the manifest is added and the
    folder renamed to `folder`. On an exception the temporary folder is removed and nothing is published.

    A process killed outright (SIGKILL, the OOM killer) runs no cleanup: its temporary folders carry its pid
    (`.tmp-<key>-<pid>-*`, `.old-<key>-<pid>-*`) and the next attempt at the same stage removes those of dead
    processes (storage/files.py)."""
    folder = Path(folder)
    stage = folder.parent.name
    with folder_written_atomically(folder) as tmp:  # replaces a forced recompute's or a manifest-less leftover
        yield tmp
        fault_point(f"{stage}:written")
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
    remote.push_stage(folder)  # a URL root: to the store, manifest last
    fault_point(f"{stage}:published")
