"""``splitshield`` command line. Each sub-command lives in its own module in this package and exposes
``register(subparsers)``; modules are discovered automatically, so adding a command touches no shared file.

Bad input (UserError) exits 2 with one line on stderr, never a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
from typing import Optional, Sequence

from splitshield._version import __version__
from splitshield.errors import OneLineParser, UserError


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="splitshield", description=__doc__.splitlines()[0].strip("`"))
    parser.add_argument("--version", action="version", version=f"splitshield {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings only")
    parser.add_argument("--plugin", action="append", default=[], metavar="FILE_OR_MODULE",
                        help="import a plugin first (a .py file or a module that registers a defense, attack, model "
                        "or dataset); repeatable, also loaded by grid workers")
    parser.add_argument("--results-db", metavar="PATH", help="results database every stored result also goes to "
                        "(default $SPLITSHIELD_RESULTS_DB or runs/results.sqlite; 'none': run folders only)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    import splitshield.cli as pkg

    for mod in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        if mod.name.startswith("cmd_"):
            importlib.import_module(f"splitshield.cli.{mod.name}").register(sub)
    return parser


def _load_plugins(argv: Sequence[str]) -> None:
    """--plugin before the parser is built: a plugin's attack or defense is then a valid choice of every command."""
    from splitshield.plugins import add_plugins_to_env, load_plugins

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--plugin", action="append", default=[])
    add_plugins_to_env(pre.parse_known_args(list(argv))[0].plugin)
    load_plugins()


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        _load_plugins(sys.argv[1:] if argv is None else argv)
    except UserError as exc:
        print(f"splitshield: error: {exc}", file=sys.stderr)
        return 2
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # recorded by grid commands (how to reproduce)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    from splitshield.resultsdb import ResultsDB, default_path

    db = args.results_db or default_path()
    args.sink = None if db == "none" else ResultsDB(db)  # explicit: commands hand it to what they run
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr, force=True)
    try:
        return int(args.handler(args) or 0)
    except UserError as exc:
        print(f"splitshield: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("splitshield: interrupted; finished epochs are checkpointed (splitshield resume RUN_DIR)",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
