"""The package's layering: the import-linter contracts in pyproject.toml (layers, and no import cycle among the
modules of any package, function-local imports included) hold for the code as it is."""
from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_import_contracts_are_kept() -> None:
    lint = os.path.join(os.path.dirname(sys.executable), "lint-imports")
    proc = subprocess.run([lint, "--config", os.path.join(ROOT, "pyproject.toml"), "--no-cache"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "2 kept, 0 broken" in proc.stdout


def test_a_broken_layer_is_caught(tmp_path) -> None:
    # The contract is not vacuous: the same check on a copy where the config layer imports the training loop fails.
    import shutil

    src = os.path.join(ROOT, "src", "splitshield")
    shutil.copytree(src, tmp_path / "splitshield", ignore=shutil.ignore_patterns("__pycache__"))
    with open(tmp_path / "splitshield" / "config.py", "a", encoding="utf-8") as fh:
        fh.write("\n\ndef _bad() -> None:\n    from splitshield.train import loop  # noqa: F401\n")
    lint = os.path.join(os.path.dirname(sys.executable), "lint-imports")
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    proc = subprocess.run([lint, "--config", os.path.join(ROOT, "pyproject.toml"), "--no-cache"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode != 0 and "splitshield.config is not allowed to import splitshield.train" in proc.stdout
