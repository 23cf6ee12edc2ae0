"""splitshield results: query and export the results database."""
from __future__ import annotations

import argparse
import csv
import json
import sys


def _results(args: argparse.Namespace) -> int:
    from splitshield.errors import UserError
    from splitshield.resultsdb import default_path, flatten, query

    where = {}
    for item in args.where:
        if "=" not in item:
            raise UserError(f"--where {item!r}: expected COLUMN=VALUE, e.g. --where dataset=fashion-mnist")
        key, value = item.split("=", 1)
        where[key] = int(value) if key == "seed" and value.lstrip("-").isdigit() else value
    rows = flatten(query(args.db or args.results_db or default_path(), **where))
    if args.format == "json":
        json.dump(rows, sys.stdout, indent=2, default=str)
        print()
    elif args.format == "csv":
        keys = sorted({k for r in rows for k in r})
        writer = csv.DictWriter(sys.stdout, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    else:
        for r in rows:
            metrics = {k: v for k, v in r.items() if k not in {"run_dir", "name", "dataset", "model", "defenses",
                                                              "seed", "config_hash", "code_version", "created",
                                                              "kind"}}
            shown = "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(metrics.items()))
            print(f"{r['run_dir']}  {r['kind']}  {r['defenses']}  seed={r['seed']}  {shown}")
        if not rows:
            print("no results", file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("results", help="query or export the results database (runs/results.sqlite)")
    p.add_argument("--db", default=None, help="database file (default: --results-db, $SPLITSHIELD_RESULTS_DB or "
                   "runs/results.sqlite)")
    p.add_argument("--where", action="append", default=[], metavar="COLUMN=VALUE",
                   help="filter: run_dir, kind, name, dataset, model, defenses, seed, config_hash")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table")
    p.set_defaults(handler=_results)
