"""splitshield demo: `splitshield run` on the demo preset (Fashion-MNIST, noise + CEM, CPU, minutes)."""
from __future__ import annotations

import argparse
import os

from splitshield.errors import UserError

PRESET = os.path.join("configs", "quick-fmnist-demo.yaml")


def _demo(args: argparse.Namespace) -> int:
    from splitshield.cli.cmd_run import _run

    if not os.path.isfile(args.config):
        raise UserError(f"{args.config} not found; run 'make demo' from the repository root or pass --config")
    return _run(argparse.Namespace(config=args.config, overrides=args.overrides, out=args.out, attack=None,
                                   protocol=None, no_audit=False, device="cpu", argv=args.argv))


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="train, attack, audit and report the demo preset (noise + CEM) on the CPU")
    p.add_argument("--config", default=PRESET, help=f"preset (default {PRESET})")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", default=os.path.join("runs", "demo"), help="run directory (default runs/demo)")
    p.set_defaults(handler=_demo)
