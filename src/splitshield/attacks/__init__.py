"""Model-inversion attacks: a registry of attacks under one threat model. Every module in this package is
imported, so a new attack only needs its own file. Running one against a stored run (protocol split, scoring,
storing the result) is ``splitshield.evaluation.attacking.run_attack``."""
import sys

from splitshield.plugins import import_members
from splitshield.registry import Registry

ATTACKS: Registry[type] = Registry("attack")

import_members(sys.modules[__name__], skip=("base",))

__all__ = ["ATTACKS"]
