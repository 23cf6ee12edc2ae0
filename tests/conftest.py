"""Shared fixtures: tiny synthetic configs so the suite stays fast and deterministic on 2 CPU cores."""
from __future__ import annotations

import copy
import os
import tempfile

# The suite runs on the CPU even on a GPU machine (GPUs hidden before torch can initialise CUDA), so every figure it
# checks is the CPU one and nothing silently switches to float16 AMP.
os.environ["CUDA_VISIBLE_DEVICES"] = ""

import pytest  # noqa: E402
import torch  # noqa: E402

# One thread per test process: faster for tiny tensors and keeps results bit-stable across machines.
torch.set_num_threads(1)
os.environ.setdefault("SPLITSHIELD_DATA", os.path.join(os.path.dirname(__file__), ".no-data"))
# Module-scoped fixtures train before the per-test fixture below applies: they write here, never to runs/.
os.environ["SPLITSHIELD_RESULTS_DB"] = os.path.join(tempfile.mkdtemp(prefix="splitshield-db-"), "results.sqlite")


@pytest.fixture(autouse=True)
def _results_db(tmp_path_factory, monkeypatch) -> None:
    """Every test writes to its own results database, never to runs/ of the checkout."""
    monkeypatch.setenv("SPLITSHIELD_RESULTS_DB", str(tmp_path_factory.mktemp("db") / "results.sqlite"))

TINY = {
    "name": "tiny",
    "seed": 0,
    "data": {"name": "synthetic", "batch_size": 32, "eval_batch_size": 64, "augment": True},
    "model": {"name": "vgg11_bn", "cut": 2, "width": 0.125},
    # float32, contiguous: the reference numerics, the same on every CPU (bfloat16 is the default only where the CPU
    # has it; tests of the bfloat16 path ask for it explicitly).
    "train": {"epochs": 1, "lr": 0.05, "schedule": "multistep", "milestones": [1], "progress": False,
              "max_steps_per_epoch": 3, "device": "cpu", "precision": "fp32", "memory_format": "contiguous"},
    "defenses": [],
}


@pytest.fixture
def tiny_raw() -> dict:
    """A raw config dict for a very small run on synthetic data (edit freely, it is a copy)."""
    return copy.deepcopy(TINY)
