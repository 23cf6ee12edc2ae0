"""splitshield report DIR [DIR ...]: rebuild the HTML and Markdown reports of grid or run folders from their stored
results, and optionally compose one Markdown document of several folders (docs/results.md)."""
from __future__ import annotations

import argparse
import os


def _report(args: argparse.Namespace) -> int:
    from splitshield.errors import UserError
    from splitshield.experiments.report import REPORT_MD, write_document, write_report

    for folder in args.dirs:  # check all first: a typo in the last folder should not leave the others half done
        if not os.path.isdir(folder):
            raise UserError(f"{folder} is not a folder; pass one that 'splitshield table', 'sweep' or 'run' wrote")
    for folder in args.dirs:
        print(f"report: {write_report(folder)}")
        print(f"markdown: {os.path.join(folder, REPORT_MD)}")
    if args.markdown:
        print(f"document: {write_document(args.dirs, args.markdown, args.title)}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from splitshield.experiments.report import DEFAULT_TITLE

    p = sub.add_parser("report", help="rebuild report.html/report.md of grid or run folders from stored results")
    p.add_argument("dirs", nargs="+", metavar="DIR", help="folder with a grid.json (a table, sweep or run)")
    p.add_argument("--markdown", metavar="PATH",
                   help="also write one Markdown document of all DIRs, e.g. docs/results.md (images are copied "
                        "into figures/results/ next to it)")
    p.add_argument("--title", default=DEFAULT_TITLE,
                   help=f"title of the --markdown document (default {DEFAULT_TITLE!r})")
    p.set_defaults(handler=_report)
