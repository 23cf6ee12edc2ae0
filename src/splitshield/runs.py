"""The run directory: resolved config, metrics log, checkpoint and results, plus loading a trained run back."""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any

import torch

from splitshield.config import ExperimentConfig, load_config
from splitshield.errors import CheckpointError

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
RESULTS_DIR = "results"


def run_dir_for(cfg: ExperimentConfig, out: str | None) -> str:
    """``out`` as given, else runs/<name>-<config hash>-s<seed> (not created here: a run that fails to start
    leaves no empty directory behind)."""
    return out or os.path.join("runs", f"{cfg.name}-{cfg.digest()[:8]}-s{cfg.seed}")


def save_config(cfg: ExperimentConfig, run_dir: str) -> None:
    with open(os.path.join(run_dir, CONFIG_FILE), "w", encoding="utf-8") as fh:
        fh.write(cfg.to_yaml())


def load_run_config(run_dir: str) -> ExperimentConfig:
    path = os.path.join(run_dir, CONFIG_FILE)
    if not os.path.isfile(path):
        raise CheckpointError(f"{run_dir} is not a run directory (no {CONFIG_FILE}); pass the folder that "
                              "'splitshield train' wrote")
    return load_config(path)


def append_jsonl(path: str, record: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, sort_keys=True) + "\n")
        fh.flush()


def read_metrics(run_dir: str) -> list[dict[str, Any]]:
    path = os.path.join(run_dir, METRICS_FILE)
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def write_result(run_dir: str, key: str, record: dict[str, Any]) -> str:
    """Store one result (attack, audit, ...) as results/<key>.json, written atomically, and in the results
    database (one row per run and key; the file is written first, so a database error loses nothing)."""
    folder = os.path.join(run_dir, RESULTS_DIR)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{key}.json")
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump({"created": time.strftime("%Y-%m-%dT%H:%M:%S"), **record}, fh, indent=2, sort_keys=True)
    os.replace(tmp, path)
    from splitshield import resultsdb

    resultsdb.record(run_dir, key, load_run_config(run_dir), record)
    return path


def read_results(run_dir: str) -> dict[str, dict[str, Any]]:
    folder = os.path.join(run_dir, RESULTS_DIR)
    if not os.path.isdir(folder):
        return {}
    out = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(".json"):
            with open(os.path.join(folder, name), encoding="utf-8") as fh:
                out[name[:-5]] = json.load(fh)
    return out


@dataclass
class LoadedRun:
    """A trained run ready for attacks, audits and deployment (eval mode, on ``device``)."""

    run_dir: str
    cfg: ExperimentConfig
    model: torch.nn.Module  # SplitModel
    defenses: torch.nn.Module  # DefenseStack
    info: Any  # DatasetInfo
    epoch: int
    device: torch.device

    def transmit(self, x: torch.Tensor) -> torch.Tensor:
        """What leaves the device for input x in [0, 1]: defenses applied to the edge output."""
        return self.defenses.transform(self.model.edge(x))


def load_run(run_dir: str, device: str | torch.device = "cpu") -> LoadedRun:
    """Rebuild model and defenses from a run directory and load its last checkpoint."""
    from splitshield.data.loaders import make_source
    from splitshield.train.build import build_components
    from splitshield.train.checkpoint import CHECKPOINT, load_checkpoint

    cfg = load_run_config(run_dir)
    state = load_checkpoint(os.path.join(run_dir, CHECKPOINT), map_location="cpu")
    info = make_source(cfg.data).dataset_info()
    model, defenses = build_components(cfg, info, train_size=int(state.get("train_size", 1)))
    try:
        model.load_state_dict(state["model"])
        defenses.load_state_dict(state["defenses"])
    except (RuntimeError, KeyError) as exc:
        raise CheckpointError(f"checkpoint in {run_dir} does not match its config.yaml ({str(exc)[:100]}...); "
                              "was the config edited after training?") from None
    device = torch.device(device)
    model.to(device).eval()
    defenses.to(device).eval()
    return LoadedRun(run_dir, cfg, model, defenses, info, int(state["epoch"]), device)
