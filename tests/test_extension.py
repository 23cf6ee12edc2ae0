"""Extending the toolkit: a new dataset, model, defense or attack is one new file in its package; and two configs
that resolve to the same experiment share one run folder across `train`, `run`, `table` and `sweep`."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

NEW_FILES = {
    "data/stripes.py": '''
        """A new dataset: horizontal or vertical stripes."""
        import torch

        from splitshield.data.base import DATASETS, DataSource, DatasetInfo, TensorImageDataset


        @DATASETS.register("stripes")
        class Stripes(DataSource):
            info = DatasetInfo(name="stripes", num_classes=2, channels=1, size=16, mean=(0.5,), std=(0.5,))

            def load(self, split):
                n = 128 if split == "train" else 64
                labels = torch.arange(n) % 2
                rows = (torch.arange(16) % 4 < 2).float()
                img = torch.where(labels[:, None, None] == 0, rows[None, :, None].expand(n, 16, 16),
                                  rows[None, None, :].expand(n, 16, 16))
                return TensorImageDataset((img[:, None] * 255).to(torch.uint8), labels)
        ''',
    "models/tiny_cnn.py": '''
        """A new model: one conv on the edge, a linear head in the cloud."""
        from torch import nn

        from splitshield.models.base import MODELS, Bottleneck, Edge, Normalize, SplitModel, SplitSpec, infer_feature_shape


        @MODELS.register("tiny_cnn")
        def tiny_cnn(cfg, info):
            edge = Edge(Normalize(info.mean, info.std), nn.Sequential(nn.Conv2d(info.channels, 8, 3, padding=1),
                                                                      nn.ReLU()), Bottleneck(8, 4))
            cloud = nn.Sequential(nn.Flatten(), nn.Linear(4 * info.size * info.size, info.num_classes))
            return SplitModel(edge, cloud, SplitSpec(info.input_shape, infer_feature_shape(edge, info.input_shape),
                                                     info.num_classes))
        ''',
    "defenses/scale_down.py": '''
        """A new defense: multiply z by a factor (1 = identity)."""
        from dataclasses import dataclass

        from splitshield.defenses.base import DEFENSES, Defense, Stage


        @DEFENSES.register("scale_down")
        class ScaleDown(Defense):
            stage = Stage.TRANSFORM

            @dataclass
            class Config:
                factor: float = 0.5

            @classmethod
            def identity_config(cls):
                return cls.Config(factor=1.0)

            def transform(self, z):
                return z if self.cfg.factor == 1.0 else z * self.cfg.factor
        ''',
    "attacks/mean_guess.py": '''
        """A new attack: the attacker's mean image for every input."""
        from dataclasses import dataclass

        from splitshield.attacks import ATTACKS
        from splitshield.attacks.base import Attack, AttackConfig
        from splitshield.data import to_unit


        @dataclass
        class MeanConfig(AttackConfig):
            pass


        @ATTACKS.register("mean_guess")
        class MeanGuess(Attack):
            Config = MeanConfig

            def fit(self, x_fit, x_val):
                self.mean = to_unit(x_fit.to(self.device)).mean(0, keepdim=True)
                self.info["converged"] = True

            def invert(self, z):
                return self.mean.expand(len(z), *self.mean.shape[1:])
        ''',
}

SCRIPT = '''
import tempfile
from splitshield.attacks import ATTACKS
from splitshield.data import DATASETS
from splitshield.defenses import DEFENSES
from splitshield.models import MODELS
from splitshield.evaluation.attacking import run_attack
from splitshield.resolve import load_experiment
from splitshield.train import train

assert "stripes" in DATASETS and "tiny_cnn" in MODELS and "scale_down" in DEFENSES and "mean_guess" in ATTACKS
cfg = load_experiment({"data": {"name": "stripes", "batch_size": 32}, "model": {"name": "tiny_cnn"},
                       "train": {"epochs": 3, "lr": 0.1, "schedule": "constant", "progress": False,
                                 "precision": "fp32"},
                       "defenses": [{"name": "scale_down"}], "attacks": [{"name": "mean_guess"}]})
run = train(cfg, out=tempfile.mkdtemp() + "/run")
result = run_attack(run.run_dir, "mean_guess", "train", store=False)
print("OK", run.test_accuracy, result["mse"], result["baseline"]["mse"])
'''


def test_a_new_dataset_model_defense_and_attack_are_one_file_each(tmp_path) -> None:
    pkg = tmp_path / "splitshield"
    shutil.copytree(os.path.join(ROOT, "src", "splitshield"), pkg, ignore=shutil.ignore_patterns("__pycache__"))
    for rel, source in NEW_FILES.items():  # nothing else is edited: no registry, import list or grid code
        (pkg / rel).write_text(textwrap.dedent(source))
    env = dict(os.environ, PYTHONPATH=str(tmp_path), SPLITSHIELD_DATA=str(tmp_path / "no-data"))
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=300,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ok, accuracy, mse, baseline = proc.stdout.strip().splitlines()[-1].split()
    assert ok == "OK" and float(accuracy) > 0.9 and float(mse) == pytest.approx(float(baseline))


def test_configs_that_resolve_to_one_experiment_share_one_folder_across_commands(tiny_raw, tmp_path,
                                                                                monkeypatch, capsys) -> None:
    from splitshield.cli.main import main
    from splitshield.experiments.spec import SweepConfig, TableConfig, load_grid, sweep_tasks, table_tasks

    monkeypatch.chdir(tmp_path)  # the default runs/ folder of every command is here
    raw = dict(tiny_raw, attacks=[{"name": "knn", "k": 3}])
    raw["train"] = dict(raw["train"], epochs=1)
    explicit = dict(raw, defenses=[{"name": "gaussian_noise", "sigma": 0.05}, {"name": "cem"}])
    defaulted = dict(raw, name="another-label", defenses=[{"name": "gaussian_noise", "sigma": 0.05},
                                                          {"name": "cem", "lam": 0.1, "add_noise": True}])
    defaulted["train"] = dict(raw["train"], progress=True, device="cpu")  # UI and hardware knobs: not identity
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(explicit))
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(defaulted))
    assert main(["-q", "train", "a.yaml"]) == 0
    folder = capsys.readouterr().out.split("run: ")[1].split()[0]
    assert os.path.dirname(folder) == "runs" and os.path.isfile(os.path.join(folder, "checkpoint.pt"))
    stamp = os.path.getmtime(os.path.join(folder, "checkpoint.pt"))
    assert main(["-q", "run", "b.yaml", "--no-audit"]) == 0  # the same experiment: trained once, reused
    assert capsys.readouterr().out.split("run: ")[1].split()[0] == folder
    assert os.path.getmtime(os.path.join(folder, "checkpoint.pt")) == stamp
    grid = {"name": "g", "base": "b.yaml", "attacks": ["knn"], "protocols": ["train"],
            "rows": [{"label": "Noise", "defenses": [{"name": "gaussian_noise", "sigma": 0.05}]}],
            "arms": [{"label": "+CEM", "add": [{"name": "cem"}]}]}
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(grid))
    assert [t.run_dir for t in table_tasks(load_grid("t.yaml", TableConfig))] == [folder]
    sweep = {"name": "s", "base": "a.yaml", "attacks": ["knn"], "arms": [{"label": ""}], "sweeps": [
        {"label": "sigma", "key": "defenses.0.sigma", "values": [0.05],
         "defenses": [{"name": "gaussian_noise", "sigma": 0.1}, {"name": "cem"}]}]}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(sweep))
    assert [t.run_dir for t in sweep_tasks(load_grid("s.yaml", SweepConfig))] == [folder]
    assert main(["-q", "table", "t.yaml"]) == 0
    progress = capsys.readouterr().err
    assert "Noise+CEM s0: computed audit" in progress and "computed train" not in progress  # only `run`'s skip
    assert os.path.getmtime(os.path.join(folder, "checkpoint.pt")) == stamp
