"""CLI smoke and bad-input tests: exit 2 with one line on stderr, never a traceback."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from splitshield.cli.main import main


@pytest.fixture
def tiny_yaml(tiny_raw, tmp_path) -> str:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_raw))
    return str(path)


def test_train_then_resume_smoke(tiny_yaml, tmp_path, capsys) -> None:
    out = str(tmp_path / "run")
    assert main(["-q", "train", tiny_yaml, "--out", out, "--set", "train.epochs=1"]) == 0
    printed = capsys.readouterr().out
    assert "test accuracy:" in printed and os.path.isfile(os.path.join(out, "checkpoint.pt"))
    assert main(["-q", "resume", out]) == 0  # already finished: resumes to the same final state


@pytest.mark.parametrize("family,expected", [("models", "vgg11_bn"), ("datasets", "fashion-mnist")])
def test_list(family: str, expected: str, capsys) -> None:
    assert main(["list", family]) == 0
    assert expected in capsys.readouterr().out


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "splitshield", *args], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120)


def assert_one_line_error(proc: subprocess.CompletedProcess, fragment: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr and fragment in lines[0]


def test_unknown_key(tiny_yaml) -> None:
    assert_one_line_error(run_cli("train", tiny_yaml, "--set", "train.epoch=2"), "valid keys")


def test_bad_value(tiny_yaml) -> None:
    assert_one_line_error(run_cli("train", tiny_yaml, "--set", "train.lr=fast"), "expected a number")


def test_missing_dataset_fails_cleanly(tiny_yaml, tmp_path) -> None:
    out = tmp_path / "run"
    proc = run_cli("train", tiny_yaml, "--set", "data.name=fashion-mnist", "--set", f"data.root={tmp_path}/none",
                   "--out", str(out))
    assert_one_line_error(proc, "fashion-mnist not found")
    assert not out.exists()  # a run that cannot start leaves nothing behind


def test_missing_config_file(tmp_path) -> None:
    assert_one_line_error(run_cli("train", str(tmp_path / "missing.yaml")), "not found")


def test_corrupt_checkpoint_on_resume(tiny_yaml, tmp_path) -> None:
    out = str(tmp_path / "run")
    assert main(["-q", "train", tiny_yaml, "--out", out]) == 0
    with open(os.path.join(out, "checkpoint.pt"), "wb") as fh:
        fh.write(b"not a checkpoint")
    assert_one_line_error(run_cli("resume", out), "corrupt")


def test_resume_of_a_non_run_directory(tmp_path) -> None:
    assert_one_line_error(run_cli("resume", str(tmp_path)), "not a run directory")


def test_bad_subcommand_argument_is_one_line() -> None:
    assert_one_line_error(run_cli("list", "gadgets"), "invalid choice")


def test_results_command_lists_and_exports(tiny_yaml, tmp_path, capsys) -> None:
    out = str(tmp_path / "run")
    assert main(["-q", "train", tiny_yaml, "--out", out]) == 0
    capsys.readouterr()
    assert main(["results", "--format", "csv", "--where", "dataset=synthetic"]) == 0
    csv_text = capsys.readouterr().out
    assert "test_accuracy" in csv_text.splitlines()[0] and os.path.abspath(out) in csv_text
    assert main(["results", "--where", "dataset=cifar10"]) == 0
    assert os.path.abspath(out) not in capsys.readouterr().out
    assert_one_line_error(run_cli("results", "--where", "colour=red"), "unknown results column")


def test_benchmark_arguments_are_one_line_errors(tmp_path) -> None:
    assert_one_line_error(run_cli("bench", "cem-gain"), "required: config")
    assert_one_line_error(run_cli("bench", "nosuch"), "unknown benchmark 'nosuch'")
    assert_one_line_error(run_cli("table", str(tmp_path / "none.yaml")), "not found")
