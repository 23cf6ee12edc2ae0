"""splitshield sweep GRID: accuracy vs reconstruction-MSE trade-off curves (noise sigma, lambda, cut layer), the
MSE vs conditional-entropy scatter, reconstructions and the efficiency table; resumable."""
from __future__ import annotations

import argparse

from splitshield.cli.common import add_grid_args


def _sweep(args: argparse.Namespace) -> int:
    from splitshield.experiments.grid import execute, write_manifest
    from splitshield.experiments.spec import SweepConfig, load_grid, sweep_tasks

    grid = load_grid(args.grid, SweepConfig, args.overrides)
    tasks = sweep_tasks(grid)
    if args.dry_run:  # nothing is written
        for task in tasks:
            print(f"{task.label}: {task.run_dir}")
        return 0
    write_manifest(grid, "sweep", tasks, args.argv)
    results = execute(tasks, grid, args.executor, **({"address": args.address} if args.address else {}))
    from splitshield.experiments.report import write_report

    print(f"report: {write_report(str(grid.out))}")
    return 1 if any(not r.ok for r in results) else 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="trade-off curves over noise, lambda and cut layer, with and without CEM")
    add_grid_args(p, "sweep grid YAML, e.g. configs/quick-fmnist-sweep.yaml")
    p.set_defaults(handler=_sweep)
