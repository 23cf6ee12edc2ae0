"""splitshield table GRID: the paper's Table 1 (defenses x {without, with CEM} x seeds), resumable."""
from __future__ import annotations

import argparse

from splitshield.cli.common import add_grid_args


def _table(args: argparse.Namespace) -> int:
    from splitshield.experiments.grid import execute, load_stored, write_manifest
    from splitshield.experiments.spec import TableConfig, load_grid, table_tasks
    from splitshield.experiments.tables import table_from_stored, to_markdown, write_table_files

    grid = load_grid(args.grid, TableConfig, args.overrides)
    tasks = table_tasks(grid)
    if args.dry_run:  # nothing is written
        for task in tasks:
            print(f"{task.label}: {task.run_dir}")
        return 0
    write_manifest(grid, "table", tasks, args.argv)
    results = execute(tasks, grid, args.executor, **({"address": args.address} if args.address else {}))
    table = table_from_stored(load_stored(str(grid.out)).grid, results)
    paths = write_table_files(str(grid.out), table)
    print(to_markdown(table))
    from splitshield.experiments.report import write_report

    report = write_report(str(grid.out))
    print(f"table: {paths['md']} ({paths['csv']}, {paths['tex']})")
    print(f"report: {report}")
    failed = [r for r in results if not r.ok]
    return 1 if failed else 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("table", help="run a defense x {w/o, w/ CEM} x seeds grid and render the paper's Table 1")
    add_grid_args(p, "table grid YAML, e.g. configs/quick-fmnist-table.yaml")
    p.set_defaults(handler=_table)
