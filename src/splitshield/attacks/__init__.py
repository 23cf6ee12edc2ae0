"""Model-inversion attacks: a registry of attacks under one threat model."""
from splitshield.registry import Registry

ATTACKS: Registry[type] = Registry("attack")

__all__ = ["ATTACKS"]
