"""splitshield list datasets|models|defenses|attacks."""
from __future__ import annotations

import argparse


def _registries() -> dict:
    from splitshield.attacks import ATTACKS
    from splitshield.data import DATASETS
    from splitshield.defenses import DEFENSES
    from splitshield.models import MODELS

    return {"datasets": DATASETS, "models": MODELS, "defenses": DEFENSES, "attacks": ATTACKS}


def _list(args: argparse.Namespace) -> int:
    registry = _registries()[args.family]
    for name in registry.names():
        doc = (registry.get(name).__doc__ or "").strip().splitlines()
        print(f"{name:16s} {doc[0] if doc else ''}".rstrip())
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("list", help="list the registered datasets, models, defenses or attacks")
    p.add_argument("family", choices=["datasets", "models", "defenses", "attacks"])
    p.set_defaults(handler=_list)
