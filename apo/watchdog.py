"""No child outlives `apo`: a watchdog process that ends the command's descendants when the command dies.

`kill -9`, the OOM killer or a preempted node end `apo train` without running any handler, and its children
(vLLM's engine processes holding GiBs of KV cache, the temporary Prefect server holding its port) would live on
as orphans. The watchdog runs in a session of its own, records the command's descendants every half second,
and when the command is gone sends them SIGTERM, then SIGKILL to those still alive 5 s later. Process groups are
left alone, so Ctrl-C from a terminal still reaches the command (SIGTERM and Ctrl-C end it cleanly anyway).

    python -m apo.watchdog PID
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

POLL_S = 0.5
GRACE_S = 5.0


def start(pid: int | None = None) -> subprocess.Popen:
    """Watch `pid` (default: this process) from a process of its own."""
    return subprocess.Popen([sys.executable, "-m", "apo.watchdog", str(pid or os.getpid())],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def watch(pid: int) -> None:
    import psutil

    try:
        parent = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    me = os.getpid()
    known: dict[int, psutil.Process] = {}
    while parent.is_running() and parent.status() != psutil.STATUS_ZOMBIE:
        try:
            for child in parent.children(recursive=True):
                if child.pid != me:
                    known.setdefault(child.pid, child)
        except psutil.NoSuchProcess:
            break
        time.sleep(POLL_S)
    alive = [p for p in known.values() if p.is_running()]  # is_running also checks the start time (pid reuse)
    for p in alive:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(alive, timeout=GRACE_S)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


if __name__ == "__main__":
    watch(int(sys.argv[1]))
