"""splitshield sweep GRID: accuracy vs reconstruction-MSE trade-off curves (noise sigma, lambda, cut layer), the
MSE vs conditional-entropy scatter, reconstructions and the efficiency table; resumable."""
from __future__ import annotations

import argparse

from splitshield.cli.common import add_grid_args, run_grid


def _sweep(args: argparse.Namespace) -> int:
    from splitshield.experiments.report import write_report

    ran = run_grid(args, "sweep")
    if ran is None:
        return 0
    grid, results = ran
    print(f"report: {write_report(str(grid.out))}")
    return 1 if any(not r.ok for r in results) else 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="trade-off curves over noise, lambda and cut layer, with and without CEM")
    add_grid_args(p, "sweep grid YAML, e.g. configs/quick-fmnist-sweep.yaml")
    p.set_defaults(handler=_sweep)
