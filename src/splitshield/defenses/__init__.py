"""Defenses: a registry of composable components (noise, NoPeek, dropout, top-k, ResSFL, PATROL, BiDO,
SiftFunnel, CEM). Every module in this package is imported, so a new member only needs its own file."""
import sys

from splitshield.defenses.base import DEFENSES, Defense, DefenseEnv, StepContext
from splitshield.defenses.stack import DefenseStack
from splitshield.plugins import import_members

import_members(sys.modules[__name__], skip=("base", "stack"))

__all__ = ["DEFENSES", "Defense", "DefenseEnv", "StepContext", "DefenseStack"]
