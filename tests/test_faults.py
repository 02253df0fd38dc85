"""Fault injection (issue 13): `apo train` is SIGKILLed at named points of every stage (storage/faults.py), and
resumed by running the same command again, until it finishes. Each kill is what the OOM killer or a preempted
node does: no handler runs. The resumed run must end with the same tables as a run that was never interrupted
(same rows, none twice), the same checkpoint, no temporary folder left behind, and no process of a killed
command still alive.

The points are passed in pipeline order, one per command: each resumed command skips the stages already done,
so it reaches the next point on its way. A point that is never reached fails the test (the command finishes
instead of dying). Tiny run: the generated catalogue, a 2-layer random model of the embedded model's
architecture, the deterministic hf engine; the default suite kills it once in five stages, `-m slow` at every
point of every stage.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
RUN = "faults"
TIMING = {"seconds", "tokens_per_s", "peak_mem_mb"}  # train_metrics columns that measure the machine

_STAGE_POINTS = {  # in the order the tiny run passes them (`start` flow, then iteration 1)
    "demos": ["start", "turn@2", "written", "published"],
    "sft": ["start", "step@2", "written", "published"],
    "eval": ["start", "turn@2", "written", "published"],  # iteration 0: the warm start's evaluation
    "reference": ["start", "turn@2", "written", "published"],
    "record": ["written"],  # iteration 0's record
    "rollout": ["start", "turn@2", "written", "published"],
    "weights": ["start", "written", "published"],
    "train": ["start", "step", "written", "published"],
}
EVERY_POINT = [f"{stage}:{p}" for stage, points in _STAGE_POINTS.items() for p in points] + \
              ["eval:start", "eval:turn@2", "eval:written", "eval:published", "record:written"]  # iteration 1
ONE_PER_STAGE = ["sft:step@2", "eval:written", "reference:turn@2", "weights:published", "train:start"]


def apo_train(root: Path, model: Path, fault: str | None) -> tuple[int, list[str], str]:
    """Run the tiny `apo train` (with APO_FAULT=fault); returns its exit status, the command lines of its
    descendants still alive 20 s after it ended, and the tail of its stderr."""
    import psutil

    args = [sys.executable, "-m", "apo.cli", "train", "--output-dir", str(root), "--run", RUN,
            "--model", str(model), "--engine", "hf", "--dtype", "float32", "--num-steps", "1",
            "--eval-goals", "1", "--batch-size", "1", "--rollout-samples", "2", "--v-star-samples", "2",
            "--reference-block", "1", "--sft-demos", "3", "--sft-batch-episodes", "1", "--sft-epochs", "1",
            "--max-episode-steps", "6", "--max-new-tokens", "48", "--eval-frequency", "1"]
    env = {k: v for k, v in os.environ.items() if k != "APO_FAULT"}
    if fault:
        env["APO_FAULT"] = fault
    log = tempfile.TemporaryFile("w+")  # not a pipe: a full pipe would block the command's logging
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=log, text=True)
    seen: dict[int, psutil.Process] = {}
    try:
        while proc.poll() is None:  # every descendant seen while it runs (the watchdog, the Prefect server)
            try:
                seen.update({c.pid: c for c in psutil.Process(proc.pid).children(recursive=True)})
            except psutil.NoSuchProcess:
                pass
            time.sleep(0.2)
        _, alive = psutil.wait_procs(list(seen.values()), timeout=20)
        log.seek(0)
        return proc.returncode, [" ".join(p.cmdline())[:100] for p in alive], log.read()[-3000:]
    finally:
        log.close()
        proc.kill()
        for p in seen.values():
            if p.is_running():
                p.kill()


def run_tables(root: Path, run: str = RUN) -> dict[str, object]:
    """Everything the run wrote that a later stage or a user reads, with the root's path and timings taken out:
    each Parquet table's rows, each iteration record, each checkpoint's tensors (keyed by relative path)."""
    out: dict[str, object] = {}
    base = root / "runs" / run
    for path in sorted(base.rglob("*.parquet")):
        table = pq.read_table(path)
        rows = table.drop_columns([c for c in table.column_names if c in TIMING]).to_pylist()
        out[str(path.relative_to(base))] = json.loads(json.dumps(rows).replace(str(root), "<root>"))
    for path in sorted(base.rglob("iteration.json")):
        out[str(path.relative_to(base))] = json.loads(path.read_text().replace(str(root), "<root>"))
    for path in sorted(base.rglob("model.safetensors")):
        out[str(path.relative_to(base))] = load_file(path)
    return out


def leftovers(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in (root / "runs").rglob("*")
                  if p.name.startswith((".tmp-", ".old-")) or p.suffix == ".tmp")


@pytest.fixture(scope="module")
def uninterrupted(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("uninterrupted")
    status, alive, stderr = apo_train(root, tiny_model, None)
    assert status == 0, stderr
    return run_tables(root)


def assert_same(tables: dict, expected: dict) -> None:
    assert sorted(tables) == sorted(expected)
    for name, value in expected.items():
        if name.endswith("model.safetensors"):
            assert value.keys() == tables[name].keys(), name
            assert all(torch.equal(value[k], tables[name][k]) for k in value), f"{name}: other weights"
        else:
            assert tables[name] == value, f"{name} differs from the uninterrupted run's"


@pytest.mark.parametrize("points", [ONE_PER_STAGE, pytest.param(EVERY_POINT, marks=pytest.mark.slow)],
                         ids=["one-per-stage", "every-point"])
def test_killed_and_resumed_run_equals_the_uninterrupted_one(points, uninterrupted, tiny_model, tmp_path):
    for point in points:
        status, alive, stderr = apo_train(tmp_path, tiny_model, point)
        assert status == -signal.SIGKILL, f"APO_FAULT={point}: not reached (exit {status}): {stderr}"
        assert not alive, f"APO_FAULT={point}: still running after the command was killed: {alive}"
    status, alive, stderr = apo_train(tmp_path, tiny_model, None)
    assert status == 0, stderr
    assert not alive
    assert leftovers(tmp_path) == []
    assert_same(run_tables(tmp_path), uninterrupted)


def test_a_killed_stage_leaves_its_temporary_folder_until_the_stage_runs_again(tmp_path):
    """What the resumed command cleans: the killed writer's temporary folder (its pid is in the name), and
    only when that writer is gone; a live writer's folder is left alone. A record's temporary file likewise."""
    from storage.files import remove_dead_leftovers, write_json

    folder = tmp_path / "runs" / "r" / "rollout" / "abc123"
    folder.parent.mkdir(parents=True)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live_tmp = folder.parent / f".tmp-abc123-{sleeper.pid}-x1"
    dead_tmp = folder.parent / f".tmp-abc123-{dead.pid}-x2"
    dead_old = folder.parent / f".old-abc123-{dead.pid}-x3"
    other_key = folder.parent / f".tmp-def456-{dead.pid}-x4"
    for p in (live_tmp, dead_tmp, dead_old, other_key):
        (p / "episodes.parquet").parent.mkdir()
        (p / "episodes.parquet").write_bytes(b"half")
    record = folder.parent / "iteration.json"
    dead_record_tmp = folder.parent / f".tmp-iteration.json-{dead.pid}-ab12cd34"
    live_record_tmp = folder.parent / f".tmp-iteration.json-{sleeper.pid}-ab12cd34"
    for p in (dead_record_tmp, live_record_tmp):
        p.write_text('{"iter')
    try:
        assert sorted(remove_dead_leftovers(folder)) == sorted([dead_tmp, dead_old])
        assert live_tmp.is_dir() and other_key.is_dir() and not dead_tmp.exists() and not dead_old.exists()
        write_json(record, {"iteration": 1})
        assert not dead_record_tmp.exists() and live_record_tmp.is_file()
        assert json.loads(record.read_text()) == {"iteration": 1}
    finally:
        sleeper.kill()
        sleeper.wait()
