"""Typed configs of the grid commands (`table`, `sweep`, `frontier`) and their expansion into experiment tasks.

A grid file names a base experiment config (``base:``, relative to the grid file) plus ``set:`` overrides, and
what to vary; ``inherit: other-grid.yaml`` starts from another grid file (merged like an experiment's ``base:``).
A table has rows (a label, the defenses it trains with or a ``preset:`` file whose defenses it takes,
and row-specific ``set:`` overrides) and arms, applied to every row: an arm names components to add, e.g.

    arms:
      - {label: ""}                                               # the row as it is
      - {label: "+noise", add: [{name: gaussian_noise, sigma: 0.025}], unless: [gaussian_noise, laplace_noise]}
      - {label: "+CEM", add: [{name: cem}]}

Added components go in at their stage (an added noise before the row's objective defenses), so arms compose with
any row, and a new plug-in needs no grid code. ``unless``: an arm that would add nothing new to a row that already
has one of those components is that row itself (not trained twice; the table shows the row's numbers there).
A row's ``arms`` (labels) restricts which arms it gets (No_defense: only the plain one). A sweep varies one ``key``
over ``values`` on top of its ``defenses`` (or a ``preset:``'s, as a row); a frontier grid is a sweep grid whose
sweeps are each one defense's strength knob, reported as accuracy-privacy fronts (experiments/frontier.py).

Every task is a full, resolved ExperimentConfig; its run folder is ``resolve.run_dir_for`` under ``runs`` (default
runs/, where `splitshield run` and `train` put theirs), so grids and single runs that contain the same experiment
share one run folder and its results.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Optional

from splitshield.config import ComponentSpec, ExperimentConfig
from splitshield.configtools import apply_overrides, from_dict, load_composed, parse_override, to_dict
from splitshield.defenses import DEFENSES
from splitshield.errors import ConfigError
from splitshield.resolve import DEFAULT_RUNS, load_experiment, run_dir_for


@dataclass
class Arm:
    """A variant applied to every row: the components it adds (at their stage), unless the row has one of
    ``unless`` already."""

    label: str = ""
    add: list[ComponentSpec] = field(default_factory=list)
    unless: list[str] = field(default_factory=list)


@dataclass
class Row:
    """One row of a table: ``defenses`` (or those of the ``preset`` file), plus ``set`` overrides of the config."""

    label: str
    defenses: list[ComponentSpec] = field(default_factory=list)
    preset: Optional[str] = None  # an experiment YAML (relative to the grid file) whose defenses this row takes
    set: list[str] = field(default_factory=list)
    arms: Optional[list[str]] = None  # the arm labels this row gets (default: all)

    def check(self, path: str) -> None:
        if self.preset and self.defenses:
            raise ConfigError(f"{path}: give defenses or preset, not both")
        for item in self.set:
            parse_override(item)


@dataclass
class GridCommon:
    """What every grid file has: the base experiment, the seeds, the attacks and protocols, where runs go."""

    name: str = "grid"
    base: str = ""  # experiment YAML, relative to the grid file
    set: list[str] = field(default_factory=list)  # --set style overrides of the base
    seeds: list[int] = field(default_factory=lambda: [0])
    attacks: list[str] = field(default_factory=lambda: ["decoder"])  # entries of the base's attacks: list
    protocols: list[str] = field(default_factory=lambda: ["train", "infer"])
    arms: list[Arm] = field(default_factory=lambda: [Arm()])
    runs: Optional[str] = None  # where the run folders go (default: runs/, shared with `splitshield run`/`train`)
    out: Optional[str] = None  # this grid's folder: grid.json, tables, report (default runs/<name>)
    audit: bool = True

    def check(self, path: str) -> None:
        if not self.base:
            raise ConfigError(f"{path}.base: name the experiment config the grid starts from")
        if not self.seeds:
            raise ConfigError(f"{path}.seeds: give at least one seed")
        if not self.arms:
            raise ConfigError(f"{path}.arms: give at least one arm ({{label: ''}} is the row as it is)")
        labels = [a.label for a in self.arms]
        if len(set(labels)) != len(labels):
            raise ConfigError(f"{path}.arms: labels must differ, got {labels}")
        for protocol in self.protocols:
            if protocol not in ("train", "infer"):
                raise ConfigError(f"{path}.protocols: {protocol!r} is not valid; valid: 'train', 'infer'")
        for item in self.set:
            parse_override(item)


@dataclass
class TableConfig(GridCommon):
    rows: list[Row] = field(default_factory=list)
    efficiency: bool = False  # add edge parameters and MACs columns

    def check(self, path: str) -> None:
        super().check(path)
        known = {a.label for a in self.arms}
        for i, row in enumerate(self.rows):
            for label in row.arms or []:
                if label not in known:
                    raise ConfigError(f"{path}.rows.{i}.arms: {label!r} is not an arm of this grid; valid: "
                                      f"{', '.join(repr(k) for k in sorted(known))}")


@dataclass
class Sweep:
    """One trade-off curve: ``key`` (a --set path) takes each of ``values`` on top of ``defenses`` (or those of the
    ``preset`` file, as a table row's), in every arm (``arms``: the labels of the grid's arms to draw; default all)."""

    label: str
    key: str
    values: list[Any] = field(default_factory=list)
    defenses: list[ComponentSpec] = field(default_factory=list)
    preset: Optional[str] = None  # an experiment YAML (relative to the grid file) whose defenses this sweep takes
    arms: Optional[list[str]] = None

    def check(self, path: str) -> None:
        if not self.values:
            raise ConfigError(f"{path}.values: give at least one value")
        if self.preset and self.defenses:
            raise ConfigError(f"{path}: give defenses or preset, not both")


@dataclass
class SweepConfig(GridCommon):
    sweeps: list[Sweep] = field(default_factory=list)
    protocols: list[str] = field(default_factory=lambda: ["train"])
    figure_runs: int = 4  # reconstruction figure: this many runs of the first sweep (evenly spaced)


@dataclass
class FrontierConfig(SweepConfig):
    """A sweep grid read as accuracy-privacy fronts: each sweep is one defense's strength knob, the first arm is the
    knob alone and every later arm (+CEM) is compared with it at matched accuracy (experiments/frontier.py).
    ``margin``: the relative MSE change that separates "dominates" / "matches" / "below" in the verdicts."""

    margin: float = 0.10

    def check(self, path: str) -> None:
        super().check(path)
        if len(self.arms) < 2:
            raise ConfigError(f"{path}.arms: a frontier compares later arms with the first (the knob alone); give "
                              "at least two, e.g. [{label: ''}, {label: +CEM, add: [{name: cem}]}]")
        if not 0 < self.margin < 1:
            raise ConfigError(f"{path}.margin: must be in (0, 1), got {self.margin}")
        for i, sweep in enumerate(self.sweeps):
            if len(sweep.values) < 2:
                raise ConfigError(f"{path}.sweeps.{i}.values: a front needs at least two knob settings")
            if sweep.arms is not None and self.arms[0].label not in sweep.arms:
                raise ConfigError(f"{path}.sweeps.{i}.arms: must include the first arm "
                                  f"{self.arms[0].label!r} (the knob alone, what the others are compared with)")


@dataclass(frozen=True)
class Task:
    """One experiment of a grid."""

    group: str  # table row label or sweep label
    arm: str  # the arm's label ("" for the row as it is)
    seed: int
    value: Any  # the swept value (None in tables; a sweep may sweep null too, hence ``swept``)
    cfg: ExperimentConfig
    run_dir: str
    swept: bool = False  # a sweep point: the label shows its value, null included

    @property
    def row(self) -> str:
        """The table row this task fills: its group and arm (``Dropout+CEM``)."""
        return self.group + self.arm

    @property
    def label(self) -> str:
        point = f" {shown(self.value)}" if self.swept else ""
        return f"{self.group}{point}{self.arm} s{self.seed}"


def shown(value: Any) -> str:
    """A swept value as the grid file spells it (YAML: null, true, false), not as Python prints it (None, True)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def load_grid(path: str, kind: type, overrides: tuple[str, ...] | list[str] = ()) -> Any:
    """Load a grid YAML into ``kind`` (TableConfig or SweepConfig); ``base`` and row presets become paths usable
    from here."""
    raw = apply_overrides(load_composed(path, key="inherit"), overrides)  # a grid may start from another
    cfg = from_dict(kind, raw, "grid")
    here = os.path.dirname(os.path.abspath(path))
    base = os.path.join(here, cfg.base)
    if not os.path.isfile(base):
        raise ConfigError(f"grid.base: {cfg.base} not found next to {path}; name an experiment config")
    cfg.base = base
    for part in ("rows", "sweeps"):
        for i, item in enumerate(getattr(cfg, part, [])):
            if item.preset:
                preset = os.path.join(here, item.preset)
                if not os.path.isfile(preset):
                    raise ConfigError(f"grid.{part}.{i}.preset: {item.preset} not found next to {path}")
                item.preset = preset
    cfg.out = cfg.out or os.path.join(DEFAULT_RUNS, cfg.name)
    cfg.runs = cfg.runs or DEFAULT_RUNS  # shared by default: `run`, `train` and every grid find the same folders
    return cfg


def with_arm(defenses: list[ComponentSpec], arm: Arm) -> Optional[list[ComponentSpec]]:
    """``defenses`` with the arm's components inserted at their stage; None when ``unless`` applies."""
    names = {d.name for d in defenses}
    if arm.add and names & set(arm.unless):
        return None
    out = list(defenses)
    for spec in arm.add:
        stage = DEFENSES.get(spec.name).stage
        at = max((i + 1 for i, d in enumerate(out) if DEFENSES.get(d.name).stage <= stage), default=0)
        out.insert(at, spec)
    return out


def experiment(grid: GridCommon, defenses: list[ComponentSpec], seed: int, extra: tuple[str, ...] = (),
               preset: Optional[str] = None, row_set: tuple[str, ...] = ()) -> ExperimentConfig:
    """The base config (or a row's preset) with the grid's overrides, ``defenses`` as its defense list, ``seed``,
    then the row's and the task's own overrides."""
    raw = apply_overrides(load_composed(preset or grid.base), list(grid.set))
    raw.update(seed=seed, defenses=[to_dict(d) for d in defenses])
    raw.setdefault("train", {})["progress"] = False
    return load_experiment(raw, list(row_set) + list(extra))


def _row_defenses(row: Row | Sweep) -> list[ComponentSpec]:
    if not row.preset:
        return list(row.defenses)
    specs = load_composed(row.preset).get("defenses", [])
    return [ComponentSpec.from_config(d, f"{row.preset}: defenses.{i}") for i, d in enumerate(specs)]


def table_tasks(grid: TableConfig) -> list[Task]:
    """Every row in every arm it gets, for every seed. An arm that ``unless`` makes the row itself is the row's
    task again (same folder: trained once), so each table cell has its run."""
    tasks = []
    for seed in grid.seeds:
        for row in grid.rows:
            base = _row_defenses(row)
            for arm in grid.arms:
                if row.arms is not None and arm.label not in row.arms:
                    continue
                specs = with_arm(base, arm)
                cfg = experiment(grid, base if specs is None else specs, seed, preset=row.preset,
                                 row_set=tuple(row.set))
                tasks.append(Task(row.label, arm.label, seed, None, cfg, run_dir_for(cfg, grid.runs)))
    return tasks


def sweep_tasks(grid: SweepConfig) -> list[Task]:
    """Every sweep's values in each of its arms, for every seed (seed by seed: all points of a seed come before the
    next seed's, so a grid stopped half way has whole fronts of the first seeds)."""
    tasks = []
    for seed in grid.seeds:
        for sweep in grid.sweeps:
            base = _row_defenses(sweep)
            for arm in grid.arms:
                if sweep.arms is not None and arm.label not in sweep.arms:
                    continue
                specs = with_arm(base, arm)
                for value in sweep.values:
                    cfg = experiment(grid, base if specs is None else specs, seed, preset=sweep.preset,
                                     extra=(f"{sweep.key}={_yaml(value)}",))
                    tasks.append(Task(sweep.label, arm.label, seed, value, cfg, run_dir_for(cfg, grid.runs),
                                      swept=True))
    return tasks


def _yaml(value: Any) -> str:
    import json

    return json.dumps(value)
