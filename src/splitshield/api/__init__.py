"""The public Python API (re-exported by ``splitshield``): defenses in your own loop, attacks and audits of your own
encoder, run folders, registries. Everything else in the package is internal and may change."""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, TypeVar, Union, cast

from splitshield.api.leakage import attack, audit, save_reconstructions
from splitshield.api.loop import LoopDefense, defense
from splitshield.attacks import ATTACKS
from splitshield.attacks.base import Attack
from splitshield.data import DATASETS
from splitshield.defenses import DEFENSES, Defense
from splitshield.config import ExperimentConfig
from splitshield.handle import Run
from splitshield.models import MODELS
from splitshield.plugins import load_plugins

# The decorated class comes back as itself (its own type), so a checker sees the user's subclass, not the base.
DefenseT = TypeVar("DefenseT", bound=type[Defense])
AttackT = TypeVar("AttackT", bound=type[Attack])


def register_defense(name: str) -> Callable[[DefenseT], DefenseT]:
    """Class decorator: register a ``splitshield.Defense`` subclass under ``name`` (configs, grids and
    ``splitshield.defense`` then accept it). Duplicate names are errors."""
    return cast("Callable[[DefenseT], DefenseT]", DEFENSES.register(name))


def register_attack(name: str) -> Callable[[AttackT], AttackT]:
    """Class decorator: register a ``splitshield.Attack`` subclass under ``name``."""
    return cast("Callable[[AttackT], AttackT]", ATTACKS.register(name))


def list_defenses() -> list[str]:
    """Registered defense names."""
    return DEFENSES.names()


def list_attacks() -> list[str]:
    """Registered attack names."""
    return ATTACKS.names()


def list_models() -> list[str]:
    """Registered split-model names (the built-in zoo)."""
    return MODELS.names()


def list_datasets() -> list[str]:
    """Registered dataset names."""
    return DATASETS.names()


def load_dataset(name: str, split: str = "train", *, root: Optional[str] = None,
                 size: Optional[int] = None, seed: int = 0) -> Any:
    """A registered dataset's split as an in-memory Dataset of (uint8 image (C, H, W), label) items, read from
    disk (``root``, else $SPLITSHIELD_DATA, else the dataset's default folders; nothing is downloaded). ``size``:
    a seeded subset of that many items. A missing dataset is a one-line ``DatasetNotFound`` saying how to get it."""
    from splitshield.config import DataConfig
    from splitshield.data.loaders import load_split, subset

    if split not in ("train", "test"):
        from splitshield.errors import ConfigError

        raise ConfigError(f"unknown split {split!r}; valid: train, test")
    DATASETS.get(name)  # an unknown name lists the valid ones
    return subset(load_split(DataConfig(name=name, root=root, download=False), split), size, seed, split)


def load_experiment(source: Union[str, dict[str, Any]], overrides: Sequence[str] = ()) -> ExperimentConfig:
    """An experiment config from a YAML path or a dict, with ``--set``-style overrides (``"train.epochs=5"``),
    type-checked and resolved (every component with all its parameters): what ``splitshield train`` runs."""
    from splitshield.resolve import load_experiment as _load

    return _load(source, overrides)


def experiment(config: Union[str, dict[str, Any], ExperimentConfig], *, out: Optional[str] = None,
               overrides: Sequence[str] = (), attacks: Optional[Sequence[str]] = None,
               protocols: Sequence[str] = ("train",), audit: bool = True, device: str = "cpu") -> Run:
    """``splitshield run`` from Python: train (or resume, or reuse) the experiment, run its attacks under
    ``protocols`` and the audit, and return its ``Run``. ``out`` defaults to the config's own folder under runs/."""
    from splitshield.experiments.pipeline import run_pipeline
    from splitshield.resolve import run_dir_for

    cfg = config if isinstance(config, ExperimentConfig) else load_experiment(config, overrides)
    run_dir = out or run_dir_for(cfg)
    run_pipeline(cfg, run_dir, attacks=attacks, protocols=protocols, audit=audit, device=device)
    return Run.open(run_dir, device=device)


__all__ = ["LoopDefense", "Run", "attack", "audit", "defense", "experiment", "list_attacks", "list_datasets",
           "list_defenses", "list_models", "load_dataset", "load_experiment", "load_plugins", "register_attack",
           "register_defense", "save_reconstructions"]
