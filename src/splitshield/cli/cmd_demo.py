"""splitshield demo: the main job on the embedded default (Fashion-MNIST on CPU, minutes)."""
from __future__ import annotations

import argparse
import os

from splitshield.cli.common import print_result
from splitshield.errors import UserError

PRESET = os.path.join("configs", "quick-fmnist.yaml")


def _demo(args: argparse.Namespace) -> int:
    from splitshield.config import load_config
    from splitshield.train import train

    if not os.path.isfile(args.config):
        raise UserError(f"{args.config} not found; run 'make demo' from the repository root or pass --config")
    cfg = load_config(args.config, args.overrides)
    result = train(cfg, out=args.out)
    print_result(result)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="train the quick Fashion-MNIST preset on the CPU and report")
    p.add_argument("--config", default=PRESET, help=f"preset (default {PRESET})")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", default=os.path.join("runs", "demo"), help="run directory (default runs/demo)")
    p.set_defaults(handler=_demo)
