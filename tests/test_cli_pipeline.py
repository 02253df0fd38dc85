"""`apo train | iteration | sql`: bad input gives one line on stderr and exit 2, and writes nothing."""
from __future__ import annotations

import subprocess
import sys

import pytest

from apo.cli import main


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
    (["--engine", "nope"], ["engine", "'nope'"]),
    (["--objective", "ppo"], ["objective", "'ppo'"]),
    (["--temperature", "-1"], ["--temperature"]),
    (["--num-steps", "-1"], ["--num-steps", ">= 0"]),
    (["--sft-demos", "-2"], ["--sft-demos", ">= 0"]),
    (["--sft-epochs", "0"], ["--sft-epochs", ">= 1"]),
    (["--sft-learning-rate", "0"], ["--sft-learning-rate", "> 0"]),
    (["--sft-batch-episodes", "0"], ["--sft-batch-episodes", ">= 1"]),
    (["--observation-mode", "html"], ["--observation-mode", "'html'", "text_rich"]),
    (["--history-turns", "-1"], ["--history-turns", ">= 0"]),
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
