"""splitshield train CONFIG / splitshield resume RUN_DIR."""
from __future__ import annotations

import argparse

from splitshield.cli.common import add_config_args, config_from_args, print_result


def _train(args: argparse.Namespace) -> int:
    from splitshield.train import train

    cfg = config_from_args(args)
    result = train(cfg, out=args.out, sink=args.sink)
    print_result(result)
    return 0


def _resume(args: argparse.Namespace) -> int:
    from splitshield.runs import load_run_config
    from splitshield.train import train

    cfg = load_run_config(args.run_dir)
    result = train(cfg, resume_dir=args.run_dir, sink=args.sink)
    print_result(result)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a split model (with its defenses) from a config")
    add_config_args(p)
    p.add_argument("--out", help="run directory (default runs/<dataset>-<model>-<defenses>-<hash>-s<seed>)")
    p.set_defaults(handler=_train)
    r = sub.add_parser("resume", help="continue an interrupted run to the same result")
    r.add_argument("run_dir")
    r.set_defaults(handler=_resume)
