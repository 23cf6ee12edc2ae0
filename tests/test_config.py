"""Typed configs: presets load, overrides reach nested keys and list items, typos name the valid keys."""
from __future__ import annotations

import glob
import os

import pytest
import yaml

from splitshield.config import ExperimentConfig, load_config
from splitshield.errors import ConfigError
from splitshield.resolve import load_experiment

ROOT = os.path.dirname(os.path.dirname(__file__))


PRESETS = sorted(glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"), recursive=True))


def _is_grid(path: str) -> bool:
    with open(path, encoding="utf-8") as fh:
        raw = yaml.safe_load(fh) or {}
    return bool({"rows", "sweeps", "inherit"} & set(raw))


GRIDS = [p for p in PRESETS if _is_grid(p)]


@pytest.mark.parametrize("path", [p for p in PRESETS if p not in GRIDS])
def test_every_preset_loads_and_round_trips(path: str) -> None:
    cfg = load_config(path)
    again = load_config(yaml.safe_load(cfg.to_yaml()))
    assert again == cfg
    assert again.digest() == cfg.digest()


@pytest.mark.parametrize("path", GRIDS)
def test_every_grid_expands_into_valid_experiments(path: str) -> None:
    from splitshield.experiments.spec import (FrontierConfig, SweepConfig, TableConfig, load_grid, sweep_tasks,
                                              table_tasks)

    with open(path, encoding="utf-8") as fh:
        sweep = "sweeps" in (yaml.safe_load(fh) or {})
    kind, expand = (SweepConfig, sweep_tasks) if sweep else (TableConfig, table_tasks)
    if path.endswith("-frontier.yaml"):  # a sweep grid of its own type (`splitshield frontier`)
        kind = FrontierConfig
    tasks = expand(load_grid(path, kind))
    assert tasks and all(isinstance(t.cfg, ExperimentConfig) for t in tasks)


def test_paper_presets_hold_the_paper_schedule() -> None:
    cfg = load_config(os.path.join(ROOT, "configs", "paper-cifar10.yaml"))
    assert (cfg.train.epochs, cfg.train.lr, cfg.train.momentum, cfg.train.weight_decay) == (240, 0.05, 0.9, 5e-4)
    assert cfg.train.milestones == [60, 120, 180] and cfg.train.gamma == 0.2 and cfg.data.batch_size == 128


def test_overrides_reach_nested_keys_with_yaml_typed_values(tiny_raw: dict) -> None:
    cfg = load_config(tiny_raw, ["train.epochs=7", "train.lr=0.1", "data.augment=false", "model.name=resnet20",
                                 "model.cut=3", "train.milestones=[2, 4]"])
    assert (cfg.train.epochs, cfg.train.lr, cfg.data.augment) == (7, 0.1, False)
    assert cfg.model.name == "resnet20" and cfg.train.milestones == [2, 4]


def test_override_lists_of_components_and_their_items(tiny_raw: dict) -> None:
    tiny_raw["defenses"] = []
    cfg = load_config(tiny_raw, ["defenses=[{name: gaussian_noise, sigma: 0.1}]", "defenses.0.sigma=0.2"])
    assert cfg.defenses[0].name == "gaussian_noise" and cfg.defenses[0].params == {"sigma": 0.2}


def test_unknown_key_names_the_valid_keys(tiny_raw: dict) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(tiny_raw, ["train.epoch=3"])
    message = str(err.value)
    assert "config.train.epoch" in message and "epochs" in message and "\n" not in message


@pytest.mark.parametrize("override,fragment", [
    ("train.epochs=three", "expected an integer"),
    ("train.optimizer=adamw", "valid: 'sgd', 'adam'"),
    ("train.epochs=0", "must be positive"),
    ("data.augment=maybe", "true or false"),
    ("defenses.3.sigma=1", "out of range"),
    ("model=3", "expected a mapping"),
    ("nokey", "KEY=VALUE"),
])
def test_bad_values_are_one_line_config_errors(tiny_raw: dict, override: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment) as err:
        load_config(tiny_raw, [override])
    assert "\n" not in str(err.value)


def test_unknown_component_names_the_registry(tiny_raw: dict) -> None:
    tiny_raw["defenses"] = [{"name": "gausian_noise"}]
    load_config(tiny_raw)  # the config layer knows no plugins: resolution names the registry
    with pytest.raises(ConfigError, match="unknown defense 'gausian_noise'; valid:"):
        load_experiment(tiny_raw)


def test_missing_and_malformed_files(tmp_path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "nope.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(bad))


def test_defaults_are_the_papers() -> None:
    cfg = ExperimentConfig()
    assert cfg.train.optimizer == "sgd" and cfg.train.lr == 0.05 and cfg.model.bottleneck_channels == 8


def test_duplicate_keys_are_errors_not_silently_overwritten(tmp_path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text("defenses:\n  - {name: gaussian_noise, sigma: 0.1}\ntrain: {epochs: 1}\ndefenses: []\n")
    with pytest.raises(ConfigError, match="duplicate key 'defenses' at line 4"):
        load_config(str(path))


def test_the_cem_sweep_is_the_cut_and_size_sections_of_the_full_sweep() -> None:
    # its comment promises the same run folders: running either grid fills the other
    from splitshield.experiments.spec import SweepConfig, load_grid, sweep_tasks

    def points(name: str) -> dict[str, str]:
        tasks = sweep_tasks(load_grid(os.path.join(ROOT, "configs", name), SweepConfig))
        return {t.label: os.path.basename(t.run_dir) for t in tasks}

    cem, full = points("quick-fmnist-cem-sweep.yaml"), points("quick-fmnist-sweep.yaml")
    assert len(cem) == 12 and {label.split(" ")[0] for label in cem} == {"cut", "training"}
    assert all(full[label] == folder for label, folder in cem.items())


def test_the_5k_grid_reuses_the_sweeps_5k_runs_and_varies_only_lambda() -> None:
    # its comment promises the other sweep's 5k runs at seed 0, and lambda arms not scaled by the training length
    from splitshield.experiments.spec import SweepConfig, load_grid, sweep_tasks

    def tasks(name: str):  # noqa: ANN202
        return sweep_tasks(load_grid(os.path.join(ROOT, "configs", name), SweepConfig))

    five = {t.label: t for t in tasks("quick-fmnist-cem-5k.yaml")}
    full = {t.label: os.path.basename(t.run_dir) for t in tasks("quick-fmnist-sweep.yaml")}
    for label in ("training images 5000 s0", "training images 5000+CEM s0"):
        assert os.path.basename(five[label].run_dir) == full[label]
    assert len({t.run_dir for t in five.values()}) == 15  # noise, +CEM, lambda 0.1, 0.2, 0.3 as given x 3 seeds
    as_given = [t.cfg.defenses[-1].params for label, t in five.items() if "as given" in label]
    assert {p["min_steps"] for p in as_given} == {0} and {p["lam"] for p in as_given} == {0.1, 0.2, 0.3}


def test_the_half_lambda_table_shares_every_run_but_the_cem_arm_with_the_quick_table() -> None:
    # its comment promises the quick table's rows and +noise runs, and CEM at lam 0.05 as the only change
    from splitshield.experiments.spec import TableConfig, load_grid, table_tasks

    def tasks(name: str, *overrides: str):  # noqa: ANN202
        return {t.label: t for t in table_tasks(load_grid(os.path.join(ROOT, "configs", name), TableConfig,
                                                          list(overrides)))}

    half = tasks("quick-fmnist-table-lam005.yaml")
    full = tasks("quick-fmnist-table.yaml", "seeds=[0,1,2]")
    assert half.keys() == full.keys() and len(half) == 66
    for label, task in half.items():
        same = task.run_dir == full[label].run_dir
        assert same != label.startswith(tuple(f"{r}+CEM" for r in ("Bottleneck", "DistCorr", "Dropout", "PATROL",
                                                                      "ResSFL", "Noise_Nopeek", "Noise_ARL"))), label
        if not same:
            assert task.cfg.defenses[-1].params["lam"] == 0.05 and full[label].cfg.defenses[-1].params["lam"] == 0.1


def test_the_frontier_shares_the_quick_tables_runs_and_one_cem_run_per_pair_of_rows() -> None:
    # its comment promises the table's run folders where a point is a table cell, DistCorr+CEM = Noise_Nopeek+CEM
    # and ResSFL+CEM = Noise_ARL+CEM at every knob value, and docs/benchmarks.md plans 132 points in 112 runs
    from splitshield.experiments.spec import FrontierConfig, TableConfig, load_grid, sweep_tasks, table_tasks

    table = {t.run_dir: t.label for t in table_tasks(load_grid(os.path.join(ROOT, "configs", "quick-fmnist-table.yaml"),
                                                               TableConfig, ["seeds=[0,1]"]))}
    grid = load_grid(os.path.join(ROOT, "configs", "quick-fmnist-frontier.yaml"), FrontierConfig)
    assert grid.seeds == [0, 1] and grid.protocols == ["train"] and grid.attacks == ["decoder", "gan", "knn"]
    assert len(grid.sweeps) == 7 and all(len(s.values) >= 4 for s in grid.sweeps)
    tasks = {t.label: t for t in sweep_tasks(grid)}
    folders = {t.run_dir for t in tasks.values()}
    assert len(tasks) == 132 and len(folders) == 112 and len(folders & set(table)) == 28
    for label, cell in [("Gaussian noise 0.025 s0", "Bottleneck+noise s0"),
                        ("Gaussian noise 0.025+CEM s1", "Bottleneck+CEM s1"), ("DistCorr 0.5 s0", "DistCorr s0"),
                        ("Dropout 0.5+CEM s1", "Dropout+CEM s1"), ("PATROL 1.0 s0", "PATROL s0"),
                        ("ResSFL 1.0+CEM s1", "ResSFL+CEM s1"), ("Noise_ARL 0.7 s0", "Noise_ARL+noise s0"),
                        ("Noise_ARL 1.0 s1", "ResSFL+noise s1")]:
        assert table[tasks[label].run_dir] == cell, label
    for seed in (0, 1):
        for value in (0.1, 0.5, 2.0, 4.0, 8.0):
            assert tasks[f"DistCorr {value}+CEM s{seed}"].run_dir == tasks[f"Noise_Nopeek {value}+CEM s{seed}"].run_dir
        for value in (0.1, 0.3, 0.7, 1.0, 3.0):
            assert tasks[f"ResSFL {value}+CEM s{seed}"].run_dir == tasks[f"Noise_ARL {value}+CEM s{seed}"].run_dir
    assert [d.params.get("alpha") for d in tasks["Noise_Nopeek 8.0 s1"].cfg.defenses] == [None, 8.0]
