"""`apo train | iteration | sql`: bad input gives one line on stderr and exit 2, and writes nothing."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from apo.cli import main

REPO = Path(__file__).resolve().parents[1]


def _one_line_error(capsys, argv: list[str], *words: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for word in words:
        assert word in err, err


@pytest.mark.parametrize("flags, words", [
    (["--beta", "0"], ["beta", "> 0"]),
    (["--adv-clip", "-1"], ["adv-clip"]),
    (["--learning-rate", "0"], ["learning-rate"]),
    (["--kl-coef", "-0.1"], ["kl-coef"]),
    (["--batch-size", "0"], ["--batch-size", ">= 1"]),
    (["--v-star-samples", "-1"], ["--v-star-samples", ">= 0"]),
    (["--v-star-samples", "0", "--adv-norm", "batch"], ["--v-star-samples 0", "--adv-norm goal", "got"]),
    (["--v-star-samples", "0", "--adv-norm", "goal", "--objective", "apo"], ["--v-star-samples 0", "apo"]),
    (["--engine", "nope"], ["engine", "'nope'"]),
    (["--objective", "ppo"], ["objective", "'ppo'"]),
    (["--temperature", "-1"], ["--temperature"]),
    (["--num-steps", "-1"], ["--num-steps", ">= 0"]),
    (["--sft-demos", "-2"], ["--sft-demos", ">= 0"]),
    (["--sft-epochs", "0"], ["--sft-epochs", ">= 1"]),
    (["--sft-learning-rate", "0"], ["--sft-learning-rate", "> 0"]),
    (["--sft-batch-episodes", "0"], ["--sft-batch-episodes", ">= 1"]),
    (["--sft-demo-noise", "1"], ["--sft-demo-noise", "[0, 1)", "got 1.0"]),
    (["--train-layers", "-1"], ["train-layers", ">= 0"]),
    (["--observation-mode", "html"], ["--observation-mode", "'html'", "text_rich"]),
    (["--history-turns", "-1"], ["--history-turns", ">= 0"]),
    # accepted without a word before (issue 13): NaN and inf pass every comparison, run names left the root
    (["--kl-coef", "nan"], ["--kl-coef", "finite", "nan"]),
    (["--temperature", "nan"], ["--temperature", "finite"]),
    (["--learning-rate", "inf"], ["--learning-rate", "finite", "inf"]),
    (["--beta", "inf"], ["--beta", "finite"]),
    (["--run", "../../etc"], ["--run", "'../../etc'"]),
    (["--run", ""], ["--run", "''"]),
    (["--run", ".hidden"], ["--run"]),
    (["--reference-run", "a/b"], ["--reference-run", "'a/b'"]),
    (["--num-products", "-5"], ["--num-products", ">= 1"]),
    (["--shards", "0"], ["--shards", ">= 1"]),
    (["--tensor-parallel-size", "0"], ["--tensor-parallel-size", ">= 1"]),
    (["--tensor-parallel-size", "2", "--engine", "hf"], ["--tensor-parallel-size 2", "--engine vllm"]),
])
def test_bad_flag_values_give_one_line(capsys, tmp_path, flags, words):
    _one_line_error(capsys, ["train", "--output-dir", str(tmp_path), *flags], *words)
    assert not (tmp_path / "runs").exists()


def test_flag_of_the_wrong_type_is_argparse_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--num-steps", "many"])
    assert e.value.code == 2
    assert "--num-steps" in capsys.readouterr().err


def test_reference_run_that_has_not_started(tmp_path):
    """Checked before Prefect starts: one line, nothing else on stderr, no run folder written."""
    out = subprocess.run([sys.executable, "-m", "apo.cli", "train", "--output-dir", str(tmp_path), "--run", "b",
                          "--reference-run", "a", "--engine", "hf"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    [line] = out.stderr.strip().splitlines()
    assert line == "apo train: error: reference run 'a' has not started: run it first"
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("flags, expected", [
    (["--model", "/no/such/model"], "apo train: error: model '/no/such/model': expected a checkpoint folder with "
                                    "config.json"),
    (["--data", "/no/such/data"], "apo train: error: /no/such/data: data folder not found"),
])
def test_model_and_data_errors_come_before_prefect_and_write_nothing(tmp_path, flags, expected):
    """A mistyped --model or --data: one line before Prefect starts (it came after ~18 s of start-up and ~160 log
    lines), and no run identity written, so the corrected retry of the same --run is not refused (issue 13)."""
    out = subprocess.run([sys.executable, "-m", "apo.cli", "train", "--output-dir", str(tmp_path), "--run", "r",
                          "--engine", "hf", *flags], capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [expected]
    assert not (tmp_path / "runs").exists() and not (tmp_path / "prefect").exists()


def test_train_layers_beyond_the_models_layers_is_one_line_before_prefect(tmp_path, tiny_model):
    out = subprocess.run([sys.executable, "-m", "apo.cli", "train", "--output-dir", str(tmp_path), "--run", "r",
                          "--engine", "hf", "--model", str(tiny_model), "--train-layers", "3"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f"apo train: error: --train-layers 3: model '{tiny_model}' has 2 decoder layers"]
    assert not (tmp_path / "runs").exists() and not (tmp_path / "prefect").exists()


def test_sql_on_an_empty_root_and_bad_sql(capsys, tmp_path):
    assert main(["sql", "SELECT count(*) AS n FROM episodes", "--home", str(tmp_path)]) == 0
    assert capsys.readouterr().out.split() == ["n", "0"]
    _one_line_error(capsys, ["sql", "SELECT nope FROM episodes", "--home", str(tmp_path)], "sql", "nope")
    _one_line_error(capsys, ["sql", "SELECT * FROM no_such_table", "--home", str(tmp_path)], "no_such_table")


def test_replay_with_nothing_to_replay(tmp_path):
    """Checked before Prefect starts: one line, nothing else on stderr."""
    out = subprocess.run([sys.executable, "-m", "apo.cli", "iteration", "--output-dir", str(tmp_path),
                          "--from-stage", "train", "--engine", "hf"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    [line] = out.stderr.strip().splitlines()
    assert line.startswith("apo iteration: error: ") and "no iteration to replay" in line
    assert not list((tmp_path / "runs").rglob("*.parquet"))


HOLD_LOCK = """
import sys, time
from pathlib import Path
from storage.locks import writer_lock
with writer_lock(Path(sys.argv[1]), "r"):
    print("held", flush=True)
    time.sleep(600)
"""


def test_one_writer_per_run_and_a_killed_writer_leaves_no_stale_lock(tmp_path, tiny_model, caplog):
    """A second writer of a run stops with one line naming the holder (before Prefect starts); the lock of a
    SIGKILLed writer ends with it and the next writer takes over, saying so (issue 13)."""
    import logging

    from storage.locks import RunLocked, writer_lock

    folder = tmp_path / "runs" / "r"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(folder)], cwd=REPO, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLocked, match=f"run 'r' is being written by pid {holder.pid} on "):
            with writer_lock(folder, "r"):
                pass
        out = subprocess.run([sys.executable, "-m", "apo.cli", "train", "--output-dir", str(tmp_path), "--run", "r",
                              "--model", str(tiny_model), "--engine", "hf", "--dtype", "float32"],
                             capture_output=True, text=True, timeout=300, cwd=REPO)
        assert out.returncode == 2
        [line] = out.stderr.strip().splitlines()
        assert line.startswith(f"apo train: error: run 'r' is being written by pid {holder.pid} ") and \
            line.endswith("wait for it to end or use another --run"), line
        assert not (tmp_path / "prefect").exists()
    finally:
        holder.kill()
        holder.wait()
    with caplog.at_level(logging.WARNING, logger="storage.locks"):
        with writer_lock(folder, "r"):
            with writer_lock(folder, "r"):  # re-entrant: the apo-train flow and its apo subflows
                pass
    assert f"took over the lock of pid {holder.pid}" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="storage.locks"):
        with writer_lock(folder, "r"):  # released cleanly last time: nothing to take over
            pass
    assert "took over" not in caplog.text


def test_sigkill_leaves_no_child_behind(tmp_path, tiny_model):
    """`kill -9` runs no handler: the temporary Prefect server kept its port for 13+ minutes (issue 13). The
    command's watchdog (apo/watchdog.py) ends every descendant once the command is gone."""
    import signal

    from conftest import signal_apo

    args = ["train", "--model", str(tiny_model), "--engine", "hf", "--dtype", "float32", "--run", "k",
            "--num-steps", "100", "--eval-goals", "2", "--output-dir", str(tmp_path)]
    # ready: the watchdog and at least one other child (the temporary Prefect server) are up
    status, alive = signal_apo(args, lambda lines: any("apo.watchdog" in line for line in lines) and
                               any("apo.watchdog" not in line for line in lines), signal.SIGKILL, wait_s=120)
    assert status == -signal.SIGKILL
    assert not alive, f"still running after SIGKILL: {alive}"


@pytest.mark.parametrize("command", ["train", "iteration", "eval"])
def test_a_read_only_root_is_one_line_before_prefect(tmp_path, read_only, command):
    """A read-only root gave tracebacks, and `apo train` waited 80 s for Prefect's temporary server, whose home
    is in the root (issue 13)."""
    root = read_only(tmp_path / "root")
    out = subprocess.run([sys.executable, "-m", "apo.cli", command, "--output-dir", str(root), "--run", "r",
                          "--engine", "hf"], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert out.returncode == 2
    [line] = out.stderr.strip().splitlines()
    assert line.startswith(f"apo {command}: error: storage root {root} is not writable (") and \
        line.endswith("): a run writes its stages there; use another --output-dir"), line
    assert not (root / "prefect").exists()
