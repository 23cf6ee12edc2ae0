"""Typed configs of the grid commands (`table`, `sweep`) and their expansion into experiment tasks.

A grid file names a base experiment config (``base:``, relative to the grid file) plus ``set:`` overrides, and
what to vary. Every task is a full ExperimentConfig; its run folder is ``<runs>/<slug>-<config hash>-s<seed>``,
so two grids that contain the same experiment (same resolved config) share one run and its results.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Optional

from splitshield.config import ComponentSpec, ExperimentConfig
from splitshield.configtools import apply_overrides, from_dict, load_composed, load_yaml, parse_override, to_dict
from splitshield.resolve import DEFAULT_RUNS, load_experiment, run_dir_for, slug
from splitshield.errors import ConfigError


@dataclass
class DefenseRow:
    """One row of the table: a label and the defense components it trains with (CEM is appended per arm)."""

    label: str
    defenses: list[ComponentSpec] = field(default_factory=list)


# The paper's seven defenses (Table 1), with the hyper-parameters of configs/defenses/*.yaml.
PAPER_ROWS: tuple[tuple[str, list[dict[str, Any]]], ...] = (
    ("Bottleneck", [{"name": "bottleneck", "channels": 8}]),
    ("DistCorr", [{"name": "nopeek", "alpha": 0.5}]),
    ("Dropout", [{"name": "dropout", "p": 0.5, "rescale": False}]),
    ("PATROL", [{"name": "patrol", "extra_layers": 2, "lipschitz": 0.01, "adv_weight": 1.0, "measure": "mse",
                 "pretrain_epochs": 1}]),
    ("ResSFL", [{"name": "ressfl", "alpha": 0.3, "measure": "ssim", "tau": 0.5, "pretrain_epochs": 1}]),
    ("Noise_Nopeek", [{"name": "gaussian_noise", "sigma": 0.025}, {"name": "nopeek", "alpha": 0.5}]),
    ("Noise_ARL", [{"name": "gaussian_noise", "sigma": 0.025},
                   {"name": "ressfl", "alpha": 0.3, "measure": "ssim", "tau": 0.5, "pretrain_epochs": 1}]),
)


def _paper_rows() -> list[DefenseRow]:
    return [DefenseRow(label, [ComponentSpec.from_config(d, label) for d in specs]) for label, specs in PAPER_ROWS]


@dataclass
class GridCommon:
    """What every grid file has: the base experiment, the seeds, the attacks and protocols, where runs go."""

    name: str = "grid"
    base: str = ""  # experiment YAML, relative to the grid file
    set: list[str] = field(default_factory=list)  # --set style overrides of the base
    seeds: list[int] = field(default_factory=lambda: [0])
    attacks: list[str] = field(default_factory=lambda: ["decoder"])  # entries of the base's attacks: list
    protocols: list[str] = field(default_factory=lambda: ["train", "infer"])
    runs: Optional[str] = None  # where the run folders go (default: runs/, shared with `splitshield run`/`train`)
    out: Optional[str] = None  # this grid's folder: grid.json, tables, report (default runs/<name>)
    audit: bool = True

    def check(self, path: str) -> None:
        if not self.base:
            raise ConfigError(f"{path}.base: name the experiment config the grid starts from")
        if not self.seeds:
            raise ConfigError(f"{path}.seeds: give at least one seed")
        for protocol in self.protocols:
            if protocol not in ("train", "infer"):
                raise ConfigError(f"{path}.protocols: {protocol!r} is not valid; valid: 'train', 'infer'")
        for item in self.set:
            parse_override(item)


@dataclass
class TableConfig(GridCommon):
    rows: list[DefenseRow] = field(default_factory=_paper_rows)
    cem: list[ComponentSpec] = field(default_factory=lambda: [ComponentSpec("cem")])  # [] = no "+CEM" arm
    no_defense: bool = True  # a No_defense reference row (the base with no defense, no CEM arm)
    efficiency: bool = False  # add edge parameters and MACs columns


@dataclass
class Sweep:
    """One trade-off curve: ``key`` (a --set path) takes each of ``values`` on top of ``defenses``."""

    label: str
    key: str
    values: list[Any] = field(default_factory=list)
    defenses: list[ComponentSpec] = field(default_factory=list)
    compare_cem: bool = True  # also the same points with CEM appended (two curves)

    def check(self, path: str) -> None:
        if not self.values:
            raise ConfigError(f"{path}.values: give at least one value")


@dataclass
class SweepConfig(GridCommon):
    sweeps: list[Sweep] = field(default_factory=list)
    cem: list[ComponentSpec] = field(default_factory=lambda: [ComponentSpec("cem")])
    protocols: list[str] = field(default_factory=lambda: ["train"])
    figure_runs: int = 4  # reconstruction figure: this many runs of the first sweep (evenly spaced)


@dataclass(frozen=True)
class Task:
    """One experiment of a grid."""

    group: str  # table row label or sweep label
    cem: bool
    seed: int
    value: Any  # the swept value (None in tables)
    cfg: ExperimentConfig
    run_dir: str

    @property
    def label(self) -> str:
        point = "" if self.value is None else f" {self.value}"
        return f"{self.group}{point}{' +CEM' if self.cem else ''} s{self.seed}"


def load_grid(path: str, kind: type, overrides: tuple[str, ...] | list[str] = ()) -> Any:
    """Load a grid YAML into ``kind`` (TableConfig or SweepConfig); ``base`` becomes a path usable from here."""
    raw = apply_overrides(load_yaml(path), overrides)
    cfg = from_dict(kind, raw, "grid")
    base = os.path.join(os.path.dirname(os.path.abspath(path)), cfg.base)
    if not os.path.isfile(base):
        raise ConfigError(f"grid.base: {cfg.base} not found next to {path}; name an experiment config")
    cfg.base = base
    cfg.out = cfg.out or os.path.join(DEFAULT_RUNS, cfg.name)
    cfg.runs = cfg.runs or DEFAULT_RUNS  # shared by default: `run`, `train` and every grid find the same folders
    return cfg


def experiment(grid: GridCommon, defenses: list[ComponentSpec], seed: int, extra: tuple[str, ...] = (),
               tag: str = "") -> ExperimentConfig:
    """The base config with the grid's overrides, ``defenses`` as its defense list, ``seed``, and ``extra``."""
    raw = apply_overrides(load_composed(grid.base), list(grid.set))
    base_name = raw.get("name", "experiment")
    raw.update(name=f"{base_name}-{slug(tag)}" if tag else base_name, seed=seed,
               defenses=[to_dict(d) for d in defenses])
    raw.setdefault("train", {})["progress"] = False
    return load_experiment(raw, list(extra))


def _task(grid: GridCommon, group: str, cem: bool, seed: int, value: Any, cfg: ExperimentConfig) -> Task:
    return Task(group, cem, seed, value, cfg, run_dir_for(cfg, grid.runs))


def table_tasks(grid: TableConfig) -> list[Task]:
    """No_defense (if asked), then each row without and with CEM, for every seed."""
    tasks = []
    for seed in grid.seeds:
        if grid.no_defense:
            tasks.append(_task(grid, "No_defense", False, seed, None, experiment(grid, [], seed, tag="none")))
        for row in grid.rows:
            arms = [False, True] if grid.cem else [False]
            for cem in arms:
                specs = list(row.defenses) + (list(grid.cem) if cem else [])
                cfg = experiment(grid, specs, seed, tag=_components_tag(specs))
                tasks.append(_task(grid, row.label, cem, seed, None, cfg))
    return tasks


def sweep_tasks(grid: SweepConfig) -> list[Task]:
    """Every sweep's values, without and (if compare_cem) with CEM, for every seed."""
    tasks = []
    for seed in grid.seeds:
        for sweep in grid.sweeps:
            for cem in ([False, True] if sweep.compare_cem and grid.cem else [False]):
                specs = list(sweep.defenses) + (list(grid.cem) if cem else [])
                for value in sweep.values:
                    cfg = experiment(grid, specs, seed, extra=(f"{sweep.key}={_yaml(value)}",),
                                     tag=_components_tag(specs))
                    tasks.append(_task(grid, sweep.label, cem, seed, value, cfg))
    return tasks


def _components_tag(specs: list[ComponentSpec]) -> str:
    # The run name lists the components, so the same experiment gets the same name (and hash) in every grid.
    return "+".join(s.name for s in specs) or "none"


def _yaml(value: Any) -> str:
    import json

    return json.dumps(value)
