"""splitshield frontier GRID: per defense, its strength knob over several settings without and with CEM, reported as
accuracy-privacy fronts compared at matched accuracy (experiments/frontier.py); resumable."""
from __future__ import annotations

import argparse

from splitshield.cli.common import add_grid_args, finish_grid, run_grid


def _frontier(args: argparse.Namespace) -> int:
    import os

    from splitshield.experiments.frontier import frontier_sections
    from splitshield.experiments.grid import load_stored
    from splitshield.experiments.report import markdown_lines
    from splitshield.experiments.sections import Section

    ran = run_grid(args, "frontier")
    if ran is None:
        return 0
    grid, results = ran
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
