"""The run directory on disk: resolved config, metrics log and stored results (loading a trained model back is
train/build.py's ``load_run``)."""
from __future__ import annotations

import json
import os
import time
from typing import Any

from splitshield.config import ExperimentConfig, load_config
from splitshield.errors import CheckpointError

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
RESULTS_DIR = "results"


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
