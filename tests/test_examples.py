"""The examples run as a user runs them: (a) CEM in a plain loop of a user-defined model, (b) leakage of a trained
encoder with a figure, (c) a new defense in one file, put in a table through --plugin. Synthetic data by default;
(a) and (b) on Fashion-MNIST under the slow marker."""
from __future__ import annotations

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
sys.path.insert(0, EXAMPLES)

import cem_in_your_loop  # noqa: E402
import measure_leakage  # noqa: E402

import splitshield  # noqa: E402

QUICK_A = ["--epochs", "4", "--batch-size", "32", "--attack-epochs", "2", "--train-size", "256", "--test-size", "128"]


def test_example_a_cem_in_a_plain_loop_reports_gain_and_accuracy_change(capsys) -> None:
    out = cem_in_your_loop.main(QUICK_A)
    (acc0, base), (acc1, cem) = out["results"].values()
    assert isinstance(cem, splitshield.AttackResult) and cem.n == 128
    assert out["gain_percent"] == pytest.approx(100 * (cem.mse / base.mse - 1))
    assert out["accuracy_change"] == pytest.approx(acc1 - acc0)
    assert acc0 > 0.5 and acc1 > 0.5  # both models learned the task
    printed = capsys.readouterr().out
    assert "CEM: decoder MSE" in printed and "noise + CEM" in printed


def test_example_b_measures_leakage_and_draws_the_figure(tmp_path) -> None:
    out = measure_leakage.main(["--epochs", "1", "--attack-epochs", "2", "--train-size", "256",
                                "--test-size", "128", "--out", str(tmp_path / "leak.png")])
    assert [r.attack for r in out["results"]] == ["decoder", "knn"]
    assert out["audit"]["degenerate"] is False and out["audit"]["noise_std"] == pytest.approx(0.025)
    assert os.path.getsize(out["figure"]) > 0


def test_example_c_a_plugin_defense_in_a_table(tmp_path, monkeypatch) -> None:
    from splitshield.cli.main import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SPLITSHIELD_PLUGINS", "")  # --plugin names the file here; restored after the test
    plugin = os.path.join(EXAMPLES, "custom_defense", "quantize.py")
    grid = os.path.join(EXAMPLES, "custom_defense", "table.yaml")
    assert main(["-q", "--results-db", "none", "--plugin", plugin, "table", grid, "--set", "out=runs/q"]) == 0
    table = (tmp_path / "runs" / "q" / "table.md").read_text()
    assert "| Quantize |" in table and "| Quantize+CEM |" in table
    assert "quantize" in splitshield.list_defenses()
    # the quantizer really acts: its features take at most 4 values
    import torch

    run = splitshield.Run.open(next(str(p) for p in (tmp_path / "runs").iterdir() if p.is_dir()
                                    and "quantize" in p.name and "cem" not in p.name))
    assert torch.unique(run.transmit(torch.rand(4, 1, 16, 16))).numel() <= 4


def test_a_broken_plugin_is_one_line(tmp_path, capsys, monkeypatch) -> None:
    from splitshield.cli.main import main

    monkeypatch.setenv("SPLITSHIELD_PLUGINS", "")  # --plugin names the broken file here; restored after the test
    bad = tmp_path / "bad.py"
    bad.write_text("raise RuntimeError('oops')\n")
    assert main(["--plugin", str(bad), "list", "defenses"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "plugin" in err[0] and "oops" in err[0]
    assert main(["--plugin", str(tmp_path / "missing.py"), "list", "defenses"]) == 2


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_examples_a_and_b_on_fashion_mnist(tmp_path) -> None:
    sizes = ["--data", "fashion-mnist", "--train-size", "3000", "--test-size", "500"]
    out = cem_in_your_loop.main(sizes + ["--epochs", "3", "--attack-epochs", "10"])
    (acc0, _), (acc1, _) = out["results"].values()
    assert acc0 > 0.7 and acc1 > 0.7
    leak = measure_leakage.main(sizes + ["--epochs", "2", "--attack-epochs", "10", "--out",
                                         str(tmp_path / "leak.png")])
    assert leak["results"][0].learned and os.path.getsize(leak["figure"]) > 0


def test_feature_spread_script_splits_the_variance_as_numpy_does(tiny_raw, tmp_path, capsys) -> None:
    import importlib.util

    import numpy as np
    import torch

    from splitshield.config import load_config
    from splitshield.train import train

    out = str(tmp_path / "run")
    train(load_config(dict(tiny_raw, defenses=[{"name": "gaussian_noise", "sigma": 0.05}])), out=out)
    path = os.path.join(os.path.dirname(__file__), "..", "scripts", "feature-spread.py")
    spec = importlib.util.spec_from_file_location("feature_spread", path)
    script = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(script)  # type: ignore[union-attr]
    got = script.spread(out, 40)
    run = splitshield.Run.open(out)
    n = min(40, len(run.data.test))
    x = torch.stack([run.data.test[i][0] for i in range(n)])
    y = np.array([int(run.data.test[i][1]) for i in range(n)])
    with torch.no_grad():
        z = run.model.edge(x).flatten(1).double().numpy()
    within = sum((y == c).sum() * z[y == c].var(0).mean() for c in np.unique(y)) / n  # np.var: population variance
    assert got["variance"] == pytest.approx(z.var(0).mean(), rel=1e-9)
    assert got["within"] == pytest.approx(within, rel=1e-9) and 0 < got["within"] < got["variance"]
    assert got["between"] == pytest.approx(z.var(0).mean() - within, rel=1e-9)
