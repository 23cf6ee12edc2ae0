"""splitshield table GRID: the paper's Table 1 (rows x arms x seeds, e.g. each defense without, with the same
noise, and with CEM), resumable."""
from __future__ import annotations

import argparse

from splitshield.cli.common import add_grid_args, finish_grid, run_grid


def _table(args: argparse.Namespace) -> int:
    from splitshield.experiments.grid import load_stored
    from splitshield.experiments.tables import table_from_stored, to_markdown, write_table_files

    ran = run_grid(args, "table")
    if ran is None:
        return 0
    grid, results = ran
    table = table_from_stored(load_stored(str(grid.out)).grid, results)
    paths = write_table_files(str(grid.out), table)
    print(to_markdown(table))
    print(f"table: {paths['md']} ({paths['csv']}, {paths['tex']})")
    return finish_grid(grid, results)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("table", help="run a rows x arms x seeds grid and render the paper's Table 1")
    add_grid_args(p, "table grid YAML, e.g. configs/quick-fmnist-table.yaml")
    p.set_defaults(handler=_table)
