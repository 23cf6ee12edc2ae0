"""User-facing errors: the CLI turns these into one line on stderr and exit status 2, never a traceback."""


class UserError(Exception):
    """Bad input from the user (config, path, dataset, checkpoint, request). The message says what to do."""


class ConfigError(UserError, ValueError):
    """A config key or value is invalid."""


class DatasetNotFound(UserError, FileNotFoundError):
    """A dataset is missing on disk; the message says how to get it."""


class CheckpointError(UserError):
    """A checkpoint or run directory is missing, corrupt or incompatible."""
