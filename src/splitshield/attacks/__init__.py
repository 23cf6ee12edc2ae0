"""Model-inversion attacks: a registry of attacks under one threat model. Every module in this package is
imported, so a new attack only needs its own file."""
import sys

from splitshield.plugins import import_members
from splitshield.registry import Registry

ATTACKS: Registry[type] = Registry("attack")

import_members(sys.modules[__name__], skip=("base",))

from splitshield.attacks._api import run_attack  # noqa: E402

__all__ = ["ATTACKS", "run_attack"]
