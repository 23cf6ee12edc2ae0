"""splitshield sweep GRID: accuracy vs reconstruction-MSE trade-off curves (noise sigma, lambda, cut layer), the
MSE vs conditional-entropy scatter, reconstructions and the efficiency table; resumable."""
from __future__ import annotations

import argparse

from splitshield.cli.common import add_grid_args, finish_grid, run_grid


def _sweep(args: argparse.Namespace) -> int:
    ran = run_grid(args, "sweep")
    return 0 if ran is None else finish_grid(*ran)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="trade-off curves (noise, lambda, cut layer, training size) in every arm")
    add_grid_args(p, "sweep grid YAML, e.g. configs/quick-fmnist-sweep.yaml")
    p.set_defaults(handler=_sweep)
