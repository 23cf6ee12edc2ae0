"""The package version (one place: pyproject reads it, so the wheel, the CLI and the API agree)."""

__version__ = "0.2.0"
