"""Helpers shared by sub-commands."""
from __future__ import annotations

import argparse

from splitshield.config import ExperimentConfig, load_config


def add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML config (see configs/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set train.epochs=3 --set defenses.0.sigma=0.05")


def config_from_args(args: argparse.Namespace) -> ExperimentConfig:
    return load_config(args.config, args.overrides)


def print_result(result) -> None:  # noqa: ANN001 - a splitshield.train.TrainResult
    print(f"run: {result.run_dir}")
    print(f"test accuracy: {result.test_accuracy:.4f} after {result.epochs} epochs ({result.seconds:.1f}s)")


def add_grid_args(parser: argparse.ArgumentParser, what: str) -> None:
    """Arguments shared by the grid commands (table, sweep)."""
    parser.add_argument("grid", help=what)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a grid value, e.g. --set 'seeds=[0,1,2]' --set set.0=train.epochs=1")
    parser.add_argument("--executor", default="local", help="how runs are executed: local (default)")
    parser.add_argument("--address", help="cluster address for executors that use one")
    parser.add_argument("--dry-run", action="store_true", help="list the runs and their folders, run nothing")
