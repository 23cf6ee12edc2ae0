"""User-facing errors: the CLI turns these into one line on stderr and exit status 2, never a traceback."""
from __future__ import annotations

import argparse
from typing import NoReturn


class UserError(Exception):
    """Bad input from the user (config, path, dataset, checkpoint, request). The message says what to do."""


class ConfigError(UserError, ValueError):
    """A config key or value is invalid."""


class DatasetNotFound(UserError, FileNotFoundError):
    """A dataset is missing on disk; the message says how to get it."""


class CheckpointError(UserError):
    """A checkpoint or run directory is missing, corrupt or incompatible."""


class OneLineParser(argparse.ArgumentParser):
    """argparse with the same convention for bad arguments: one line on stderr, exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


class UsageError(UserError, ValueError):
    """A call of the Python API got something other than what it expects (shapes, devices, labels, data)."""
