"""splitshield bench NAME [ARGS...]: run a registered benchmark (modules in splitshield/bench/)."""
from __future__ import annotations

import argparse
import importlib
import pkgutil


def _load_all():
    import splitshield.bench as pkg
    from splitshield.bench import BENCHMARKS

    for mod in pkgutil.iter_modules(pkg.__path__):
        importlib.import_module(f"splitshield.bench.{mod.name}")
    return BENCHMARKS


def _bench(args: argparse.Namespace) -> int:
    return int(_load_all().get(args.name)(list(args.args)) or 0)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="run a benchmark (cem-overhead, serve, train-speed, ...)")
    p.add_argument("name", help="benchmark name; 'splitshield bench list' lists them")
    p.add_argument("args", nargs=argparse.REMAINDER, help="the benchmark's own arguments (see NAME --help)")
    p.set_defaults(handler=_bench)
