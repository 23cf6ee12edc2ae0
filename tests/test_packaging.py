"""Packaging facts the wheel relies on, checked fast: one version (splitshield/_version.py) read by pyproject and
named by CHANGELOG.md's newest section, and py.typed shipped as package data. The wheel itself is built, installed
in a fresh venv and run by scripts/check-wheel.sh in CI, not here."""
from __future__ import annotations

import os
import re
import sys

import pytest

import splitshield
from splitshield import _version

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pyproject() -> dict:
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


def test_version_is_dynamic_from_splitshield_version() -> None:
    cfg = _pyproject()
    assert "version" not in cfg["project"] and "version" in cfg["project"]["dynamic"]
    assert cfg["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "splitshield._version.__version__"}
    assert splitshield.__version__ == _version.__version__
    assert re.fullmatch(r"\d+\.\d+\.\d+", splitshield.__version__)


def test_version_is_the_newest_changelog_section() -> None:
    with open(os.path.join(ROOT, "CHANGELOG.md"), encoding="utf-8") as f:
        sections = re.findall(r"^## \[([^\]]+)\](.*)$", f.read(), re.M)
    released = [(v, rest) for v, rest in sections if v.lower() != "unreleased"]
    assert released, "CHANGELOG.md has no '## [X.Y.Z] - YYYY-MM-DD' section"
    newest, rest = released[0]
    assert newest == splitshield.__version__, (f"splitshield.__version__ is {splitshield.__version__} but "
                                               f"CHANGELOG.md's newest section is {newest}")
    assert re.fullmatch(r" - \d{4}-\d{2}-\d{2}", rest), f"date the section: '## [{newest}] - YYYY-MM-DD'"


def test_py_typed_is_package_data() -> None:
    assert "py.typed" in _pyproject()["tool"]["setuptools"]["package-data"]["splitshield"]
    assert os.path.isfile(os.path.join(ROOT, "src", "splitshield", "py.typed"))
