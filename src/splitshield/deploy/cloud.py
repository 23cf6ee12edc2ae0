"""The cloud part in the server's memory (``CloudModel``), run by onnxruntime or by PyTorch.

``backend="auto"`` serves the run's exported cloud ONNX (``RUN_DIR/export/cloud.onnx``, made and checked
against PyTorch when missing or stale) with onnxruntime, and falls back to PyTorch when onnxruntime is missing or
the export fails. On the quick-fmnist cloud onnxruntime is the faster one (docs/benchmarks.md, issue 14).
"""
from __future__ import annotations

import logging
from typing import Callable, Optional

import numpy as np
import torch

from splitshield.errors import UserError

log = logging.getLogger(__name__)
BACKENDS = ("auto", "onnx", "torch")


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


class TorchCloud:
    """The cloud nn.Module in eval mode under inference_mode; probabilities out."""

    name = "torch"

    def __init__(self, cloud: torch.nn.Module, *, threads: Optional[int] = None) -> None:
        self.cloud = cloud.eval()
        if threads is not None:
            torch.set_num_threads(threads)  # process-wide: the server runs one model
        self.threads = torch.get_num_threads()

    def __call__(self, z: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            logits = self.cloud(torch.from_numpy(np.ascontiguousarray(z, dtype=np.float32)))
            return torch.softmax(logits.float(), dim=1).numpy()


class OnnxCloud:
    """An exported cloud (logits out) in onnxruntime; softmax in numpy (10 numbers a row, cheaper than a node)."""

    name = "onnx"

    def __init__(self, path: str, *, threads: int = 1) -> None:
        from splitshield.deploy.cloud_export import onnx_session

        self.path = path
        self.threads = threads
        self.session = onnx_session(path, threads=threads)
        self._input = self.session.get_inputs()[0].name

    def __call__(self, z: np.ndarray) -> np.ndarray:
        logits = self.session.run(None, {self._input: np.ascontiguousarray(z, dtype=np.float32)})[0]
        return softmax(logits)


def _onnx_for(run_dir: str, run, model_hash: str, threads: int) -> OnnxCloud:  # noqa: ANN001
    from splitshield.deploy.cloud_export import export_cloud, fresh_cloud_export

    path = fresh_cloud_export(run_dir, model_hash)
    if path is None:
        log.info("exporting the cloud part of %s to ONNX (checked against PyTorch)", run_dir)
        manifest, mpath = export_cloud(run_dir, run=run, record=False)
        path = fresh_cloud_export(run_dir, model_hash)
        if path is None:
            raise UserError(f"the cloud export {mpath} could not be read back; serve with --backend torch")
    return OnnxCloud(path, threads=threads)


def load_cloud(run_dir: str, run, model_hash: str, *, backend: str = "auto",  # noqa: ANN001  (LoadedRun)
               threads: int = 1) -> Callable[[np.ndarray], np.ndarray]:
    """The forward function of the run's cloud for ``backend`` (see the module docstring for ``auto``)."""
    if backend not in BACKENDS:
        raise UserError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if backend == "torch":
        return TorchCloud(run.model.cloud, threads=threads)
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        if backend == "onnx":
            raise UserError("--backend onnx needs onnxruntime; pip install 'splitshield[serve]' or use "
                            "--backend torch") from None
        log.info("onnxruntime is not installed: serving the cloud with PyTorch")
        return TorchCloud(run.model.cloud, threads=threads)
    try:
        return _onnx_for(run_dir, run, model_hash, threads)
    except (UserError, OSError) as exc:
        if backend == "onnx":
            raise UserError(str(exc)) from None
        log.warning("serving the cloud with PyTorch: %s", exc)
        return TorchCloud(run.model.cloud, threads=threads)


class CloudModel:
    """The cloud forward (probabilities out) plus what clients must know to talk to it."""

    def __init__(self, cloud: torch.nn.Module | Callable[[np.ndarray], np.ndarray], feature_shape: tuple[int, ...],
                 input_shape: tuple[int, ...], sigma: float, class_names: list[str], model_hash: str,
                 dataset: str) -> None:
        self.forward = TorchCloud(cloud) if isinstance(cloud, torch.nn.Module) else cloud
        self.backend = str(getattr(self.forward, "name", "custom"))
        self.threads = int(getattr(self.forward, "threads", 1))
        self.feature_shape = tuple(feature_shape)
        self.input_shape = tuple(input_shape)
        self.sigma = sigma
        self.class_names = class_names
        self.model_hash = model_hash
        self.dataset = dataset

    @classmethod
    def from_run(cls, run_dir: str, *, backend: str = "auto", threads: int = 1) -> "CloudModel":
        from splitshield.deploy.manifest import state_hash
        from splitshield.train.build import load_run

        run = load_run(run_dir, "cpu")
        # Hash the full model (what export hashed) before dropping the edge: only the cloud stays referenced.
        model_hash = state_hash(run.model)
        forward = load_cloud(run_dir, run, model_hash, backend=backend, threads=threads)
        return cls(forward, run.model.feature_shape, run.info.input_shape, float(run.defenses.noise_std()),
                   list(run.info.class_names), model_hash, run.info.name)

    def predict(self, z: np.ndarray) -> np.ndarray:
        """(N, C, H, W) float32 features -> (N, classes) probabilities."""
        return self.forward(z)
