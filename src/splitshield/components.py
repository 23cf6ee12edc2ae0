"""Validation of component lists (defenses, attacks) against their registries' typed Config dataclasses."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from splitshield.configtools import from_dict
from splitshield.errors import ConfigError

if TYPE_CHECKING:
    from splitshield.config import ComponentSpec, ExperimentConfig


def component_config(registry: Any, spec: "ComponentSpec", path: str) -> Any:
    """The typed hyper-parameters of one component; unknown names/keys are errors listing the valid ones."""
    try:
        cls = registry.get(spec.name)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return from_dict(cls.Config, spec.params, f"{path}[{spec.name}]")


def validate_components(cfg: "ExperimentConfig", path: str) -> None:
    from splitshield.attacks import ATTACKS
    from splitshield.defenses import DEFENSES

    for i, spec in enumerate(cfg.defenses):
        component_config(DEFENSES, spec, f"{path}.defenses.{i}")
    for i, spec in enumerate(cfg.attacks):
        component_config(ATTACKS, spec, f"{path}.attacks.{i}")
