"""splitshield demo: the demo grid (Fashion-MNIST, Gaussian noise without and with CEM, same seed) on the CPU:
train both, attack both, and report them side by side with CEM's MSE gain and accuracy change."""
from __future__ import annotations

import argparse
import os

from splitshield.errors import UserError

PRESET = os.path.join("configs", "quick-fmnist-demo.yaml")


def _demo(args: argparse.Namespace) -> int:
    from splitshield.cli.cmd_table import _table

    if not os.path.isfile(args.grid):
        raise UserError(f"{args.grid} not found; run 'make demo' from the repository root or pass --config")
    return _table(args)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="train noise and noise + CEM, attack both, report the difference (CPU, minutes)")
    p.add_argument("--config", dest="grid", default=PRESET, help=f"demo grid (default {PRESET})")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a grid value, e.g. --set out=runs/my-demo")
    # The two runs are independent: one worker process per core (1 thread each), the split the grids use by default
    # (docs/scale.md: two threads per run were several times slower on a shared 2-core machine).
    p.set_defaults(handler=_demo, executor="process", address=None, workers=None, threads=None, retries=None,
                   dry_run=False)
