"""Defenses: a registry of composable components (noise, NoPeek, dropout, top-k, ResSFL, PATROL, BiDO,
SiftFunnel, CEM). Import order registers every member."""
from splitshield.defenses.base import DEFENSES, Defense, DefenseEnv, StepContext
from splitshield.defenses.stack import DefenseStack

__all__ = ["DEFENSES", "Defense", "DefenseEnv", "StepContext", "DefenseStack"]
