"""Import every module of a plugin package so its members register themselves (one file per member)."""
from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType


def import_members(package: ModuleType, skip: tuple[str, ...] = ("base",)) -> None:
    for mod in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if mod.name not in skip and not mod.name.startswith("_"):
            importlib.import_module(f"{package.__name__}.{mod.name}")
