"""Import every module of a plugin package so its members register themselves (one file per member); load a user's
plugin files or modules (``--plugin``, $SPLITSHIELD_PLUGINS) in every process that runs tasks."""
from __future__ import annotations

import importlib
import importlib.util
import os
import pkgutil
import sys
from types import ModuleType
from typing import Sequence


def import_members(package: ModuleType, skip: tuple[str, ...] = ("base",)) -> None:
    for mod in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if mod.name not in skip and not mod.name.startswith("_"):
            importlib.import_module(f"{package.__name__}.{mod.name}")


PLUGINS_ENV = "SPLITSHIELD_PLUGINS"  # os.pathsep-separated plugin files or modules, loaded by every process
_loaded: dict[str, ModuleType] = {}


def load_plugins(sources: Sequence[str] = ()) -> list[ModuleType]:
    """Import user plugins: Python files (``my_defense.py``) or module names (``mypkg.defenses``), each of which
    registers its members (``@splitshield.register_defense("name")``), plus those in $SPLITSHIELD_PLUGINS.

    Why an environment variable: grid workers (spawned processes, Ray tasks) are fresh interpreters; they load
    the same plugins from it before running a task. Each source is imported once per process."""
    from splitshield.errors import UserError

    named = [s for s in os.environ.get(PLUGINS_ENV, "").split(os.pathsep) if s] + list(sources)
    modules = []
    for source in named:
        key = os.path.abspath(source) if source.endswith(".py") else source
        if key not in _loaded:
            if source.endswith(".py") and not os.path.isfile(key):
                raise UserError(f"plugin {source}: no such file")
            try:
                _loaded[key] = _import_file(key) if source.endswith(".py") else importlib.import_module(source)
            except Exception as exc:  # a plugin's own error (syntax, a duplicate name): one line, not a trace
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise UserError(f"plugin {source}: cannot import it ({type(exc).__name__}: {first})") from None
        modules.append(_loaded[key])
    return modules


def _import_file(path: str) -> ModuleType:
    """A plugin file as module ``splitshield_plugin_<stem>`` (registered in sys.modules only if it imports)."""
    name = "splitshield_plugin_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[name] = module  # before exec: a plugin's own dataclasses look their module up there
    try:
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    except BaseException:
        del sys.modules[name]
        raise
    return module


def add_plugins_to_env(sources: Sequence[str]) -> None:
    """Name ``sources`` in $SPLITSHIELD_PLUGINS, so worker processes started from here load them too."""
    current = [s for s in os.environ.get(PLUGINS_ENV, "").split(os.pathsep) if s]
    for source in sources:
        entry = os.path.abspath(source) if source.endswith(".py") else source
        if entry not in current:
            current.append(entry)
    os.environ[PLUGINS_ENV] = os.pathsep.join(current)
