"""The run directory on disk: resolved config, metrics log and stored results (loading a trained model back is
train/build.py's ``load_run``).

``RunFolder`` is the one object that reads and writes a run folder: it loads ``config.yaml`` once, names results
by typed keys (``TRAIN``, ``AUDIT``, ``EFFICIENCY``, ``EXPORT``, ``AttackKey(attack, protocol)``) instead of strings
built at each call site, and sends every stored result to an explicit sink (a results database, or nothing).
"""
from __future__ import annotations

import functools
import json
import os
import time
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Protocol, Union

from splitshield.config import ExperimentConfig, load_config
from splitshield.errors import CheckpointError

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
RESULTS_DIR = "results"
TRAIN, AUDIT, EFFICIENCY, EXPORT = "train", "audit", "efficiency", "export"  # the kinds with one result per run


@dataclass(frozen=True, order=True)
class AttackKey:
    """The result of attack ``attack`` under ``protocol``: results/attack-<attack>-<protocol>.json."""

    attack: str
    protocol: str

    PREFIX = "attack-"

    @property
    def text(self) -> str:
        return f"{self.PREFIX}{self.attack}-{self.protocol}"

    @classmethod
    def parse(cls, text: str) -> Optional["AttackKey"]:
        """The key of a stored result's name, or None for a result that is not an attack's."""
        if not text.startswith(cls.PREFIX):
            return None
        attack, _, protocol = text[len(cls.PREFIX):].rpartition("-")
        return cls(attack, protocol) if attack and protocol else None

    def __str__(self) -> str:
        return self.text


ResultKey = Union[str, AttackKey]


class ResultSink(Protocol):
    """Where stored results go besides the run folder (resultsdb.ResultsDB)."""

    def record(self, run_dir: str, kind: str, cfg: ExperimentConfig, metrics: dict[str, Any]) -> None: ...


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


class RunFolder:
    """One run folder: its config (read once), metrics, and stored results by typed key."""

    def __init__(self, path: str, sink: Optional[ResultSink] = None,
                 config: Optional[ExperimentConfig] = None) -> None:
        self.path = path
        self.sink = sink
        if config is not None:  # the caller holds it already (training, a loaded run): not read again
            self.__dict__["config"] = config

    @functools.cached_property
    def config(self) -> ExperimentConfig:
        return load_run_config(self.path)

    @property
    def exists(self) -> bool:
        return os.path.isfile(os.path.join(self.path, CONFIG_FILE))

    def metrics(self) -> list[dict[str, Any]]:
        path = os.path.join(self.path, METRICS_FILE)
        if not os.path.isfile(path):
            return []
        with open(path, encoding="utf-8") as fh:
            return [json.loads(line) for line in fh if line.strip()]

    def result_path(self, key: ResultKey, suffix: str = ".json") -> str:
        return os.path.join(self.path, RESULTS_DIR, f"{key}{suffix}")

    def write(self, key: ResultKey, record: dict[str, Any]) -> str:
        """Store one result as results/<key>.json (atomically), then in the sink; the file comes first, so a
        database error loses nothing."""
        path = self.result_path(key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump({"created": time.strftime("%Y-%m-%dT%H:%M:%S"), **record}, fh, indent=2, sort_keys=True)
        os.replace(tmp, path)
        if self.sink is not None:
            self.sink.record(self.path, str(key), self.config, record)
        return path

    def read(self, key: ResultKey) -> Optional[dict[str, Any]]:
        path = self.result_path(key)
        if not os.path.isfile(path):
            return None
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)

    def results(self) -> dict[str, dict[str, Any]]:
        """Every stored result by its file name (``train``, ``audit``, ``attack-decoder-train``, ...)."""
        folder = os.path.join(self.path, RESULTS_DIR)
        if not os.path.isdir(folder):
            return {}
        out = {}
        for name in sorted(os.listdir(folder)):
            if name.endswith(".json"):
                with open(os.path.join(folder, name), encoding="utf-8") as fh:
                    out[name[:-5]] = json.load(fh)
        return out

    def attacks(self) -> Iterator[tuple[AttackKey, dict[str, Any]]]:
        for name, record in self.results().items():
            key = AttackKey.parse(name)
            if key is not None:
                yield key, record


def read_metrics(run_dir: str) -> list[dict[str, Any]]:
    return RunFolder(run_dir).metrics()


def read_results(run_dir: str) -> dict[str, dict[str, Any]]:
    return RunFolder(run_dir).results()


def write_result(run_dir: str, key: ResultKey, record: dict[str, Any], sink: Optional[ResultSink] = None) -> str:
    return RunFolder(run_dir, sink).write(key, record)
