"""`splitshield audit`: Eq. 3 / Theorem 1 bounds for trained runs, with and without noise and CEM."""
from __future__ import annotations

import json
import math
import os

import pytest
import torch

from splitshield.cli.main import main
from splitshield.config import load_config
from splitshield.defenses import _mixture as mx
from splitshield.data import build_data
from splitshield.evaluation.entropy import audit, mixture_bounds, mse_lower_bound
from splitshield.runs import read_results
from splitshield.train.build import load_run
from splitshield.train import train


def test_bounds_match_theorem_1_and_eq_3_by_hand() -> None:
    # Two classes, one component each, weights 1/2: L_C = log 2 + 1/2 sum_d log(1 + var / sigma^2).
    d_in, sigma2 = 4, 0.01
    var = torch.tensor([[[0.03, 0.01]], [[0.0, 0.07]]])  # (C=2, K=1, D=2) diagonal
    weights = torch.tensor([[0.5], [0.5]])
    half = mx.log_det_ratio(var.flatten(0, 1), sigma2, "diagonal", 2).view(2, 1)
    out = mixture_bounds(weights, half, d_in)
    h0 = 0.5 * (math.log(4) + math.log(2))
    h1 = 0.5 * (math.log(1) + math.log(8))
    lc = math.log(2) + 0.5 * h0 + 0.5 * h1
    assert out["l_c"] == pytest.approx(lc, rel=1e-6)
    assert out["h_cond"] == pytest.approx(-lc, rel=1e-6)
    assert out["mse_bound"] == pytest.approx(math.exp(-2 * lc / d_in) / (2 * math.pi * math.e), rel=1e-6)
    assert out["per_class"][1]["l_c"] == pytest.approx(h1, rel=1e-6)  # class-conditional: no label entropy
    assert mse_lower_bound(0.0, 10) == pytest.approx(1 / (2 * math.pi * math.e))


def run(tiny_raw, tmp_path, name, defenses):
    raw = dict(tiny_raw, defenses=defenses, train=dict(tiny_raw["train"], epochs=2, max_steps_per_epoch=3))
    return train(load_config(raw), out=str(tmp_path / name)).run_dir


def test_audit_cli_stores_bounds_for_noisy_runs_and_flags_noise_free_runs(tiny_raw, tmp_path, capsys) -> None:
    noisy = run(tiny_raw, tmp_path, "noisy", [{"name": "gaussian_noise", "sigma": 0.05}, {"name": "cem"}])
    clean = run(tiny_raw, tmp_path, "clean", [])
    assert main(["audit", noisy]) == 0
    assert "H(x) reference: 0.0 nats" in capsys.readouterr().out
    a = read_results(noisy)["audit"]
    assert a["noise_std"] == pytest.approx(0.05) and not a["degenerate"] and len(a["per_class"]) == 4
    assert 0 < a["mse_bound"] < 1 / (2 * math.pi * math.e) and math.isfinite(a["l_c"])
    assert a["h_cond"] == pytest.approx(-a["l_c"])
    loaded = load_run(noisy)  # same features and seeded fit, more noise: lower L_C, higher bound
    data = build_data(loaded.cfg.data, loaded.cfg.seed, train_shuffle=False)
    same = audit(loaded, data.train)
    loaded.defenses.members[0].cfg.sigma = 0.2
    louder = audit(loaded, data.train)
    assert same["l_c"] == pytest.approx(a["l_c"]) and louder["l_c"] < a["l_c"]
    assert louder["mse_bound"] > a["mse_bound"]
    assert main(["audit", clean]) == 0
    c = read_results(clean)["audit"]
    assert c["degenerate"] and c["mse_bound"] == 0.0 and c["l_c"] is None
    text = open(os.path.join(clean, "results", "audit.json")).read()
    assert "NaN" not in text and "Infinity" not in text
    json.loads(text)


def test_audit_of_a_missing_run_is_a_one_line_error(tmp_path, capsys) -> None:
    assert main(["audit", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert "not a run directory" in err and "\n" not in err
