"""Helpers shared by sub-commands."""
from __future__ import annotations

import argparse
from typing import Any, Optional

from splitshield.config import ExperimentConfig


def add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML config (see configs/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set train.epochs=3 --set defenses.0.sigma=0.05")


def config_from_args(args: argparse.Namespace) -> ExperimentConfig:
    from splitshield.resolve import load_experiment

    return load_experiment(args.config, args.overrides)


def print_result(result) -> None:  # noqa: ANN001 - a splitshield.train.TrainResult
    from splitshield import parallel

    if not parallel.is_main():  # torchrun: one report per job
        return
    print(f"run: {result.run_dir}")
    print(f"test accuracy: {result.test_accuracy:.4f} after {result.epochs} epochs ({result.seconds:.1f}s)")


def add_grid_args(parser: argparse.ArgumentParser, what: str) -> None:
    """Arguments shared by the grid commands (table, sweep)."""
    parser.add_argument("grid", help=what)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a grid value, e.g. --set 'seeds=[0,1,2]' --set set.0=train.epochs=1")
    parser.add_argument("--executor", default="local",
                        help="how runs are executed: local (default, one after another), process (worker processes "
                        "on this machine), ray (a Ray cluster; pip install 'splitshield[ray]')")
    parser.add_argument("--address", help="ray: cluster address HOST:PORT (default: start a local Ray)")
    parser.add_argument("--workers", type=int, help="process: worker processes (default: cores / threads, or GPUs)")
    parser.add_argument("--threads", type=int, help="process, ray: torch threads per run (default 1)")
    parser.add_argument("--retries", type=int, help="process, ray: attempts again for a failed run (ray default 2)")
    parser.add_argument("--dry-run", action="store_true", help="list the runs and their folders, run nothing")


def run_grid(args: argparse.Namespace, kind: str) -> Optional[tuple[Any, list]]:
    """Load the grid file of ``kind`` ("table", "sweep" or "frontier") and run it; with --dry-run only list its
    runs. Returns (grid, results), or None after a dry run."""
    from splitshield.experiments.grid import execute, write_manifest
    from splitshield.experiments.spec import (FrontierConfig, SweepConfig, TableConfig, load_grid, sweep_tasks,
                                              table_tasks)

    config_cls, expand = {"table": (TableConfig, table_tasks), "sweep": (SweepConfig, sweep_tasks),
                          "frontier": (FrontierConfig, sweep_tasks)}[kind]
    grid = load_grid(args.grid, config_cls, args.overrides)
    tasks = expand(grid)
    if args.dry_run:  # nothing is written
        for task in tasks:
            print(f"{task.label}: {task.run_dir}")
        print(f"{len({t.run_dir for t in tasks})} distinct runs for {len(tasks)} points")
        return None
    write_manifest(grid, kind, tasks, args.argv)
    options = {k: getattr(args, k) for k in ("address", "workers", "threads", "retries") if getattr(args, k) is not None}
    db = args.sink.path if args.sink is not None else None
    return grid, execute(tasks, grid, args.executor, db=db, **options)


def finish_grid(grid: Any, results: list) -> int:
    """Write the grid folder's report; exit status 1 when a run failed (it is named in the report and the table)."""
    from splitshield.experiments.report import write_report

    print(f"report: {write_report(str(grid.out))}")
    return 1 if any(not r.ok for r in results) else 0
