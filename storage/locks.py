"""One writer per run: `apo train`, `apo iteration` and the flows hold runs/<run>/writer.lock while they write.

The lock is a kernel file lock (`fcntl.flock`) on that file, so it ends with the process however the process
ends: a writer killed by SIGKILL or the OOM killer leaves no stale lock to clean up, and the next writer takes
over (logging the pid it replaces). The file's text names the holder (pid, host, start time) for the one-line
error a second writer gets. Re-entrant within a process: the `apo-train` flow and its `apo` subflows share it.

On a URL root (storage/remote.py) each machine locks its own cache, so the writer also holds a lease on the store,
`runs/<run>/writer.lease`: created only if absent (S3's conditional put), renewed every RENEW_SECONDS by a
thread, deleted on release. A second machine's writer is refused while the lease is fresh; a lease not renewed
for LEASE_SECONDS (its writer died without releasing it) is taken over, at once when its writer was a process of
this host that is gone. Freshness is read from the holder's own clock: hosts must agree on the time to well
within LEASE_SECONDS (NTP).
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

from storage import remote
from storage.files import pid_alive

log = logging.getLogger(__name__)
LOCK_FILE = "writer.lock"
LEASE_FILE = "writer.lease"
LEASE_SECONDS = 120  # a lease not renewed for this long belongs to a writer that is gone
RENEW_SECONDS = 30
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
    os.pwrite(fd, json.dumps(_identity()).encode(), 0)
    _HELD[key] = (fd, 1)
    try:
        with _store_lease(Path(run_folder), run):
            yield
    finally:
        del _HELD[key]
        os.ftruncate(fd, 0)  # released cleanly: the next writer has nothing to report
        os.close(fd)  # closing the descriptor releases the flock


def _identity() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}


@contextmanager
def _store_lease(run_folder: Path, run: str):
    """The run's lease on the store of a URL root (see the module's docstring); nothing on a local root."""
    store = remote.remote_for(run_folder)
    if store is None:
        yield
        return
    key = store.key(run_folder / LEASE_FILE)
    lease = {**_identity(), "token": uuid.uuid4().hex, "renewed": time.time()}
    if not _create(store, key, lease):
        holder = _read(store, key)
        age = time.time() - holder.get("renewed", 0)
        dead_here = holder.get("host") == lease["host"] and not pid_alive(holder.get("pid"))
        if age < LEASE_SECONDS and not dead_here:
            raise RunLocked(f"run {run!r} is being written by pid {holder.get('pid', '?')} on "
                            f"{holder.get('host', '?')} (since {holder.get('since', '?')}; its lease on the store "
                            f"was renewed {age:.0f} s ago): wait for it to end or use another --run")
        log.warning("run %r: took over the store lease of pid %s on %s, not renewed for %.0f s", run,
                    holder.get("pid"), holder.get("host"), age)
        remote.remove(run_folder / LEASE_FILE)
        if not _create(store, key, lease):  # another machine took it over in between
            raise RunLocked(f"run {run!r}: another writer took over its stale store lease first: use another --run "
                            "or wait for it to end")
    stop = threading.Event()

    def renew():
        while not stop.wait(RENEW_SECONDS):
            try:
                store.fs.pipe(key, json.dumps({**lease, "renewed": time.time()}).encode())
            except OSError as e:  # the store unreachable for a moment: the next renewal retries
                log.warning("run %r: could not renew the store lease (%s)", run, e)

    renewer = threading.Thread(target=renew, name="writer-lease", daemon=True)
    renewer.start()
    try:
        yield
    finally:
        stop.set()
        renewer.join()
        if _read(store, key).get("token") == lease["token"]:
            remote.remove(run_folder / LEASE_FILE)


def _create(store, key: str, lease: dict) -> bool:
    """Put the lease only if no lease is there (S3's If-None-Match: *); whether it was put."""
    try:
        store.fs.pipe(key, json.dumps(lease).encode(), mode="create")
        return True
    except FileExistsError:
        return False


def _read(store, key: str) -> dict:
    store.fs.invalidate_cache(key)
    try:
        return json.loads(store.fs.cat(key))
    except (FileNotFoundError, ValueError):
        return {}


def _holder(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except ValueError:
        return {}
