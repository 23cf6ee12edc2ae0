"""splitshield frontier GRID: per defense, its strength knob over several settings without and with CEM, reported as
accuracy-privacy fronts compared at matched accuracy (experiments/frontier.py); resumable."""
from __future__ import annotations

import argparse

from splitshield.cli.common import add_grid_args, finish_grid


def _frontier(args: argparse.Namespace) -> int:
    # common.run_grid knows the table and sweep kinds only; a frontier grid is a sweep grid of its own config type
    # (spec.FrontierConfig) and kind, run by the same executors (grid.execute: local, process, ray).
    import os

    from splitshield.experiments.frontier import frontier_sections
    from splitshield.experiments.grid import execute, load_stored, write_manifest
    from splitshield.experiments.report import markdown_lines
    from splitshield.experiments.sections import Section
    from splitshield.experiments.spec import FrontierConfig, load_grid, sweep_tasks

    grid = load_grid(args.grid, FrontierConfig, args.overrides)
    tasks = sweep_tasks(grid)
    if args.dry_run:  # nothing is written
        for task in tasks:
            print(f"{task.label}: {task.run_dir}")
        print(f"{len({t.run_dir for t in tasks})} distinct runs for {len(tasks)} points")
        return 0
    write_manifest(grid, "frontier", tasks, args.argv)
    options = {k: getattr(args, k) for k in ("address", "workers", "threads", "retries")
               if getattr(args, k) is not None}
    db = args.sink.path if args.sink is not None else None
    results = execute(tasks, grid, args.executor, db=db, **options)
    out = str(grid.out)
    for section in frontier_sections(load_stored(out), os.path.join(out, "figures")):
        if section.title.startswith("Frontier,"):  # the verdicts per defense, one per protocol
            print("\n".join(markdown_lines([Section(section.title, tables=section.tables)], out)))
    return finish_grid(grid, results)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("frontier", help="accuracy-privacy fronts: each defense's knob without and with CEM, "
                       "compared at matched accuracy")
    add_grid_args(p, "frontier grid YAML, e.g. configs/quick-fmnist-frontier.yaml")
    p.set_defaults(handler=_frontier)
