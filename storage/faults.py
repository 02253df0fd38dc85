"""Fault points: named places where the fault-injection test (tests/test_faults.py) kills the process.

`APO_FAULT=<stage>:<point>[@<n>]` makes the process SIGKILL itself the n-th time (default: the first) it passes
that point: no handler, `finally` or atexit runs, exactly as under the OOM killer or a preempted node. Unset (the
normal case), a fault point is one dictionary lookup.

Points, for every stage (demos, sft, reference, rollout, weights, train, eval):
    <stage>:start       the stage is about to compute (its output is not cached)
    <stage>:turn        a rollout-type stage has stepped its live episodes once more (demos, reference, rollout,
                        eval)
    <stage>:step        a training stage has taken one more optimizer step (sft, train)
    <stage>:written     every file of the stage is in its temporary folder; the manifest is not
    <stage>:published   the folder is in place with its manifest; the caller has not seen it yet
and `record:written` (an iteration's iteration.json is written, its artifacts are not published yet).
"""
from __future__ import annotations

import os
import signal

ENV = "APO_FAULT"
_passes: dict[str, int] = {}


def fault_point(name: str) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    point, _, nth = spec.partition("@")
    if point != name:
        return
    _passes[name] = _passes.get(name, 0) + 1
    if _passes[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
