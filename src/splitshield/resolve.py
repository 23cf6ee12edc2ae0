"""One resolved config per run: every component resolved once to its typed ``Config``, saved in full, and the run's
identity and folder derived from that resolution.

``{name: cem}`` and ``{name: cem, lam: <its default>}`` are the same experiment: resolution writes every parameter
of every defense and attack out (the component's ``Config`` with its defaults), so both resolve to the same config,
hash to the same digest and share one run folder. Every entry point (train, run, table, sweep, benchmarks) loads
experiments through ``load_experiment`` and names folders with ``run_dir_for``; training resolves again (idempotent)
before it saves ``config.yaml``, so a saved config is always the full resolution.

Layer: above the plugin registries (datasets, models, defenses, attacks), below training; config.py knows no plugins.
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Sequence

from splitshield.attacks import ATTACKS
from splitshield.config import ComponentSpec, ExperimentConfig, load_config
from splitshield.configtools import to_dict
from splitshield.data import DATASETS
from splitshield.defenses import DEFENSES
from splitshield.defenses.base import Stage
from splitshield.errors import ConfigError
from splitshield.models import MODELS
from splitshield.registry import Registry

DEFAULT_RUNS = "runs"


def _resolve_list(registry: Registry, specs: Sequence[ComponentSpec], path: str) -> list[ComponentSpec]:
    out = []
    for i, spec in enumerate(specs):
        typed = registry.config_of(spec.name, spec.params, f"{path}.{i}")
        out.append(ComponentSpec(spec.name, to_dict(dataclasses.asdict(typed))))
    return out


def explicit_cem_noise(defenses: list[ComponentSpec]) -> list[ComponentSpec]:
    """``defenses`` (resolved) with CEM's own noise written out as the ``gaussian_noise`` defense it is.

    Why: on a stack without a noise defense, ``cem`` adds N(0, sigma^2) at the noise stage (``add_noise``), which is
    exactly what ``gaussian_noise`` at that sigma does. Written out, ``[nopeek, cem]`` and ``[gaussian_noise, nopeek,
    cem]`` are one experiment (one digest, one run folder: the quick table trained each such pair twice), and a
    run's config.yaml names the noise its device really adds. The noise goes where the stack's stage order puts it:
    after the architecture, transform and noise stages, before the objective members."""
    cems = [s for s in defenses if s.name == "cem" and s.params.get("add_noise")]
    stages = [DEFENSES.get(s.name).stage for s in defenses]
    if not cems or any(stage == Stage.NOISE for stage in stages):
        return defenses
    noise_cfg = DEFENSES.config_of("gaussian_noise", {"sigma": cems[0].params["sigma"]}, "cem.sigma")
    noise = ComponentSpec("gaussian_noise", to_dict(dataclasses.asdict(noise_cfg)))
    at = next((i for i, stage in enumerate(stages) if stage > Stage.NOISE), len(defenses))
    return [*defenses[:at], noise, *defenses[at:]]


def resolve_defenses(specs: Sequence[ComponentSpec], path: str = "defenses") -> list[ComponentSpec]:
    """A defense list resolved as a run's is: every parameter written out, CEM's own noise made explicit."""
    return explicit_cem_noise(_resolve_list(DEFENSES, specs, path))


def resolve(cfg: ExperimentConfig, path: str = "config") -> ExperimentConfig:
    """``cfg`` with its dataset and model names checked and every component's parameters complete (unknown names or
    keys are one-line ConfigErrors that list the valid ones)."""
    for registry, name, where in ((DATASETS, cfg.data.name, "data.name"), (MODELS, cfg.model.name, "model.name")):
        if name not in registry:
            raise ConfigError(f"{path}.{where}: unknown {registry.family} {name!r}; valid: "
                              f"{', '.join(registry.names())}")
    defenses = resolve_defenses(cfg.defenses, f"{path}.defenses")
    return dataclasses.replace(cfg, defenses=defenses,
                               attacks=_resolve_list(ATTACKS, cfg.attacks, f"{path}.attacks"))


def load_experiment(source: str | dict, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """A YAML path (``base:`` chain merged) or raw dict, with ``--set`` overrides, type-checked and resolved."""
    return resolve(load_config(source, list(overrides)))


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", text).strip("_") or "run"


def run_name(cfg: ExperimentConfig) -> str:
    """``<dataset>-<model>-<defenses>-<digest>-s<seed>``: readable, and unique per resolved experiment (not per
    label: the name is not part of the identity)."""
    resolved = resolve(cfg)
    defenses = "+".join(spec.name for spec in resolved.defenses) or "none"
    return slug(f"{resolved.data.name}-{resolved.model.name}-{defenses}-{resolved.digest()[:8]}-s{resolved.seed}")


def run_dir_for(cfg: ExperimentConfig, root: str | None = None) -> str:
    """The run folder of ``cfg`` under ``root`` (default ``runs``). Not created here: a run that fails to start
    leaves no empty folder behind. Every command that picks a folder for an experiment uses this one function."""
    return os.path.join(root or DEFAULT_RUNS, run_name(cfg))
