"""``Run``: one run folder opened once, the object the pipeline and the public API pass around.

A run folder (what ``splitshield train``/``run`` write: config.yaml, metrics.jsonl, checkpoint.pt, results/) is
read through one ``Run``: its config is read once, its datasets and its trained model are built once, on first use,
and every attack, audit and export of the run goes through the same objects (the pipeline used to re-read the
config three times and rebuild the folder object for every step).

Example::

    run = splitshield.Run.open("runs/quick-fmnist-noise")
    print(run.accuracy, run.config.defenses)
    result = run.attack("decoder", protocol="train")  # AttackResult, stored in the run folder
    run.export("onnx")

Layer: above deployment and evaluation (it exports and attacks), below the experiments that use it.
"""
from __future__ import annotations

import functools
import os
from typing import Any, Optional, Union

import torch

from splitshield.config import ExperimentConfig
from splitshield.data import DataBundle, build_data
from splitshield.errors import CheckpointError, ConfigError
from splitshield.evaluation.attack_result import AttackResult
from splitshield.evaluation.attacking import run_attack
from splitshield.runs import AUDIT, CONFIG_FILE, TRAIN, AttackKey, ResultKey, ResultSink, RunFolder
from splitshield.train.build import LoadedRun, load_run
from splitshield.train.checkpoint import CHECKPOINT


class Run:
    """A trained (or training) run folder: resolved config, datasets, model and defenses, stored results.

    Args:
        path: the run folder.
        device: where the model is loaded for attacks and audits (``"cpu"``, ``"cuda"``, a ``torch.device``).
        sink: a results database every stored result also goes to (``splitshield.resultsdb.ResultsDB``), or None.
        config: the run's config when the caller has just read or written it (not read again).
    """

    def __init__(self, path: str, *, device: Union[str, torch.device] = "cpu", sink: Optional[ResultSink] = None,
                 config: Optional[ExperimentConfig] = None) -> None:
        self.path = path
        self.device = torch.device(device)
        self.folder = RunFolder(path, sink, config)

    @classmethod
    def open(cls, path: str, *, device: Union[str, torch.device] = "cpu",
             sink: Optional[ResultSink] = None) -> "Run":
        """Open a run folder; a folder without config.yaml is a one-line ``CheckpointError``."""
        if not os.path.isfile(os.path.join(path, CONFIG_FILE)):
            raise CheckpointError(f"{path} is not a run directory (no {CONFIG_FILE}); pass a folder that "
                                  "'splitshield train' or 'splitshield run' wrote")
        run = cls(path, device=device, sink=sink)
        run.config  # read now, so a malformed config.yaml fails here and not at the first attack
        return run

    def __repr__(self) -> str:
        return f"Run({self.path!r})"

    # --- what the folder holds ---
    @property
    def config(self) -> ExperimentConfig:
        """The resolved config the run was trained with (config.yaml, read once)."""
        return self.folder.config

    @property
    def sink(self) -> Optional[ResultSink]:
        return self.folder.sink

    @property
    def trained(self) -> bool:
        """Training finished (its result is stored)."""
        return self.folder.read(TRAIN) is not None

    @property
    def has_checkpoint(self) -> bool:
        return os.path.isfile(os.path.join(self.path, CHECKPOINT))

    def metrics(self) -> list[dict[str, Any]]:
        """metrics.jsonl: one record per trained epoch."""
        return self.folder.metrics()

    def results(self) -> dict[str, dict[str, Any]]:
        """Every stored result by name (``train``, ``audit``, ``attack-decoder-train``, ...)."""
        return self.folder.results()

    def result(self, key: ResultKey) -> Optional[dict[str, Any]]:
        return self.folder.read(key)

    def attack_result(self, name: str, protocol: str) -> Optional[AttackResult]:
        """The stored result of attack ``name`` under ``protocol``, typed, or None."""
        record = self.folder.read(AttackKey(name, protocol))
        return None if record is None else AttackResult.from_record(record)

    @property
    def accuracy(self) -> Optional[float]:
        """Test accuracy (0-1) of the last trained epoch, or None before the first epoch."""
        records = [r for r in self.metrics() if "test_accuracy" in r]
        return float(records[-1]["test_accuracy"]) if records else None

    # --- what is built from it, once ---
    @functools.cached_property
    def data(self) -> DataBundle:
        """The run's datasets in a fixed order (shared by every attack and audit of this handle)."""
        return build_data(self.config.data, self.config.seed, train_shuffle=False)

    @functools.cached_property
    def loaded(self) -> LoadedRun:
        """Model and defenses from the last checkpoint, in eval mode on ``device``."""
        if not self.has_checkpoint:
            if self.trained:  # finished, then archived (scripts/archive-runs.sh)
                raise CheckpointError(f"{self.path} is an archived run (its results, no {CHECKPOINT}): its stored "
                                      "results are reused, but a new attack or audit needs the model; delete the "
                                      "folder to train it again")
            raise CheckpointError(f"{self.path} has no {CHECKPOINT} yet; train it first ('splitshield train' or "
                                  "'splitshield resume')")
        return load_run(self.path, self.device, info=self.data.info, cfg=self.config)

    @property
    def model(self) -> torch.nn.Module:
        """The split model (``.edge``, ``.cloud``, ``.feature_shape``)."""
        return self.loaded.model

    @property
    def defenses(self) -> torch.nn.Module:
        """The defense stack (``.transform(z)`` is what the device sends)."""
        return self.loaded.defenses

    def transmit(self, x: torch.Tensor) -> torch.Tensor:
        """What leaves the device for images x in [0, 1], (B, C, H, W) -> (B, *feature_shape)."""
        with torch.no_grad():
            return self.loaded.transmit(x.to(self.device))

    # --- work on it ---
    def attack(self, name: str = "decoder", protocol: str = "train", *, params: Optional[dict[str, Any]] = None,
               seed: Optional[int] = None, store: bool = True, progress: bool = False) -> AttackResult:
        """Run attack ``name`` under ``protocol`` (``train``: fit on the training set, score on the test set;
        ``infer``: fit on 90% of the test set, score on the rest) with the run's ``attacks:`` settings plus
        ``params``; ``seed`` defaults to the run's. Stored in results/ (and the sink) unless ``store`` is False."""
        record = run_attack(self.loaded, name, protocol, params, seed=self.config.seed if seed is None else seed,
                            store=store, data=self.data, folder=self.folder, progress=progress)
        return AttackResult.from_record(record)

    def audit(self, *, store: bool = True, **options: Any) -> dict[str, Any]:
        """The entropy audit (evaluation/entropy.py ``audit``; ``options`` are its keywords), stored unless
        ``store`` is False."""
        from splitshield.evaluation.entropy import audit as entropy_audit

        record = entropy_audit(self.loaded, self.data.train, **options)
        if store:
            self.folder.write(AUDIT, record)
        return record

    def export(self, fmt: str = "onnx", *, part: str = "edge", out_dir: Optional[str] = None) -> str:
        """Export the edge encoder (``part="edge"``, with its on-device defenses) or the cloud part, checked on
        real test images; returns the manifest path (docs/deploy.md)."""
        if part == "edge":
            from splitshield.deploy.export import export_run

            return export_run(self.path, fmt, out_dir)[1]
        if part == "cloud":
            from splitshield.deploy.cloud_export import export_cloud

            if fmt != "onnx":
                raise ConfigError("the cloud part exports to onnx only (docs/deploy.md)")
            return export_cloud(self.path, out_dir=out_dir)[1]
        raise ConfigError(f"unknown export part {part!r}; use 'edge' or 'cloud'")
