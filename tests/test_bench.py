"""Benchmarks run end to end on tiny synthetic configs, print their headline, and reuse finished work."""
from __future__ import annotations

import os

import pytest
import yaml

from splitshield.bench.cem_gain import cem_gain
from splitshield.bench.cem_overhead import cem_overhead

TINY_ATTACK = {"name": "decoder", "epochs": 1, "blocks": 1, "channels": 8, "batch_size": 64}


@pytest.fixture
def noise_yaml(tiny_raw, tmp_path) -> str:
    raw = dict(tiny_raw, defenses=[{"name": "gaussian_noise", "sigma": 0.05}], attacks=[TINY_ATTACK])
    raw["train"] = dict(raw["train"], epochs=2, milestones=[2], max_steps_per_epoch=2)
    path = tmp_path / "noise.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def last_line(capsys) -> str:
    return capsys.readouterr().out.strip().splitlines()[-1]


def test_cem_gain_reports_per_arm_gain_and_reuses_stored_attacks(noise_yaml, tmp_path, capsys) -> None:
    argv = [noise_yaml, "--arm", "paper", "--seeds", "0", "--out", str(tmp_path / "gain")]
    assert cem_gain(argv) == 0
    out = capsys.readouterr().out
    assert "seed 0 base" in out and "seed 0 paper" in out
    assert out.strip().splitlines()[-1].startswith("mean decoder-MSE gain of CEM (first paper arm) over 1 seeds:")
    stamp = os.path.getmtime(tmp_path / "gain" / "paper-s0" / "checkpoint.pt")
    assert cem_gain(argv) == 0
    assert capsys.readouterr().out == out  # same numbers, nothing retrained
    assert os.path.getmtime(tmp_path / "gain" / "paper-s0" / "checkpoint.pt") == stamp


def test_cem_gain_without_a_paper_arm_names_the_arm_it_quotes(noise_yaml, tmp_path, capsys) -> None:
    argv = [noise_yaml, "--arm", "official", "--seeds", "0", "--out", str(tmp_path / "gain")]
    assert cem_gain(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    summary = next(line for line in lines if line.startswith("official ") and "MSE gain" in line)
    gain = summary.split("MSE gain ", 1)[1].split("%", 1)[0]
    assert lines[-1] == f"mean decoder-MSE gain of CEM (official) over 1 seeds: {gain}%"


def test_cem_overhead_prints_the_median_ratio_last(noise_yaml, capsys) -> None:
    assert cem_overhead([noise_yaml, "--epochs", "2"]) == 0
    line = last_line(capsys)
    assert line.startswith("median epoch-time ratio (with/without CEM, epochs 2-2):")
    assert float(line.rsplit(" ", 1)[1]) > 0


def test_cem_step_times_every_covariance_mode(capsys) -> None:
    from splitshield.bench.cem_step import cem_step

    assert cem_step(["--dim", "8", "--classes", "2", "--per-class", "2", "--batch", "16", "--repeats", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines[1:]] == ["diagonal", "isotropic", "full"]
    assert all(float(line.split()[1]) > 0 for line in lines[1:])


def test_attack_strength_runs_every_arm_and_ends_with_the_ratio(noise_yaml, tmp_path, capsys) -> None:
    from splitshield.attacks.decoder import DecoderConfig
    from splitshield.bench.attack_strength import arms, attack_strength
    from splitshield.config import load_config
    from splitshield.train import train

    run_dir = train(load_config(noise_yaml), out=str(tmp_path / "victim")).run_dir
    assert attack_strength([run_dir, "--protocol", "infer", "--knn-k", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    labels = [label for label, _, _ in arms(DecoderConfig(epochs=2, patience=3, channels=8), 3)]
    assert labels == ["quick budget", "4x epochs", "4x epochs, 2x channels", "kNN (k=3)"]
    for label in labels:
        assert any(line.startswith(label) and "MSE" in line for line in lines)
    ratio = float(lines[-1].split("quick / best MSE: ")[1].split()[0])
    assert ratio >= 1.0 and "best:" in lines[-1]
    assert not os.path.exists(os.path.join(run_dir, "results", "attack-decoder-infer.json"))  # nothing stored


def test_arms_scale_the_run_budget() -> None:
    from splitshield.attacks.decoder import DecoderConfig
    from splitshield.bench.attack_strength import arms

    quick, longer, wider, knn = arms(DecoderConfig(epochs=40, patience=3, channels=32, train_size=15000), 10)
    assert longer[2] == {"epochs": 160, "patience": 12} and wider[2]["channels"] == 64 and wider[2]["epochs"] == 160
    assert wider[2]["taper"] is False and wider[0] == "4x epochs, 2x channels"
    tapered = arms(DecoderConfig(epochs=40, patience=3, channels=32, taper=True), 10)
    assert tapered[1] == ("quick budget, no taper", "decoder", {"taper": False})  # the taper's own cost
    assert tapered[3][0] == "4x epochs, 2x channels, no taper" and tapered[3][2]["taper"] is False  # the strongest
    assert knn[1] == "knn" and knn[2] == {"k": 10, "train_size": 15000}


@pytest.mark.slow
def test_gpu_check_passes_as_a_cpu_smoke_run(tmp_path, capsys) -> None:
    from splitshield.bench.gpu_check import gpu_check

    assert gpu_check(["--device", "cpu", "--steps", "1", "--out", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("gpu-check: PASS")
