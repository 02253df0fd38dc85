"""One writer per run: `apo train`, `apo iteration` and the flows hold runs/<run>/writer.lock while they write.

The lock is a kernel file lock (`fcntl.flock`) on that file, so it ends with the process however the process
ends: a writer killed by SIGKILL or the OOM killer leaves no stale lock to clean up, and the next writer takes
over (logging the pid it replaces). The file's text names the holder (pid, host, start time) for the one-line
error a second writer gets. Re-entrant within a process: the `apo-train` flow and its `apo` subflows share it.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)
LOCK_FILE = "writer.lock"
_HELD: dict[str, tuple[int, int]] = {}  # lock path -> (fd, depth) held by this process


class RunLocked(ValueError):
    """Another live process writes this run."""


@contextmanager
def writer_lock(run_folder: Path, run: str):
    path = Path(run_folder) / LOCK_FILE
    key = os.path.realpath(path)
    if key in _HELD:
        fd, depth = _HELD[key]
        _HELD[key] = (fd, depth + 1)
        try:
            yield
        finally:
            _HELD[key] = (fd, depth)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        raise RunLocked(f"run {run!r} is being written by pid {holder.get('pid', '?')} on "
                        f"{holder.get('host', '?')} (since {holder.get('since', '?')}): wait for it to end or use "
                        "another --run") from None
    previous = _holder(fd)
    if previous.get("pid"):
        log.warning("run %r: took over the lock of pid %s (%s), which ended without releasing it", run,
                    previous["pid"], previous.get("since"))
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                              "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode(), 0)
    _HELD[key] = (fd, 1)
    try:
        yield
    finally:
        del _HELD[key]
        os.ftruncate(fd, 0)  # released cleanly: the next writer has nothing to report
        os.close(fd)  # closing the descriptor releases the flock


def _holder(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except ValueError:
        return {}
