"""The device side: run an exported encoder and add the deployed Gaussian noise.

Noise is drawn with numpy (the device needs onnxruntime and numpy, not torch). ``seed=None`` (the default) draws
from OS entropy: noise an attacker can predict can be subtracted, so fixed seeds are for tests only.
"""
from __future__ import annotations

import logging
import warnings
from typing import Optional

import numpy as np

from splitshield.deploy.manifest import Manifest, read_manifest
from splitshield.errors import UserError

log = logging.getLogger(__name__)


def device_noise(shape: tuple[int, ...], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """N(0, sigma^2) in float32, the same draw for the same generator state (tests rebuild it in-process)."""
    return (rng.standard_normal(shape, dtype=np.float32) * np.float32(sigma)).astype(np.float32, copy=False)


class EdgeEncoder:
    """An export loaded for inference: ``encode(images)`` gives what the device transmits."""

    def __init__(self, path: str, noise: bool = True, seed: Optional[int] = None, threads: int = 1) -> None:
        self.manifest, self.model_path = read_manifest(path)
        m: Manifest = self.manifest
        if m.part != "edge":
            raise UserError(f"{path} is the {m.part} part of the model, not the edge encoder; pass the edge export "
                            "(RUN_DIR/export/edge.json)")
        self.sigma = float(m.sigma) if noise else 0.0
        if not noise and m.sigma > 0:
            log.warning("device noise is OFF (trained sigma %.4g): transmitted features are unprotected by noise "
                        "and predictions may differ from training conditions", m.sigma)
        if seed is not None and self.sigma > 0:
            log.warning("noise seed %d is fixed: the noise is predictable and can be removed by an attacker; "
                        "use fixed seeds for tests only", seed)
        self.rng = np.random.default_rng(seed)
        if m.format == "onnx":
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            self._session = ort.InferenceSession(self.model_path, opts, providers=["CPUExecutionProvider"])
            self._input = self._session.get_inputs()[0].name
        elif m.format == "torchscript":
            import torch

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self._module = torch.jit.load(self.model_path, map_location="cpu")
        else:
            raise UserError(f"export format {m.format!r} in {path} is not supported; use onnx or torchscript")

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.manifest.input_shape)

    def features(self, images: np.ndarray) -> np.ndarray:
        """Encoder output without noise for float32 images in [0, 1], shape (N, C, H, W)."""
        x = np.ascontiguousarray(images, dtype=np.float32)
        if x.ndim != 4 or tuple(x.shape[1:]) != self.input_shape:
            raise UserError(f"images must have shape (N, {', '.join(map(str, self.input_shape))}), "
                            f"got {tuple(x.shape)}")
        if self.manifest.format == "onnx":
            return self._session.run(None, {self._input: x})[0]
        import torch

        with torch.no_grad():
            return self._module(torch.from_numpy(x)).numpy()

    def encode(self, images: np.ndarray) -> np.ndarray:
        """What leaves the device: encoder features plus the deployed noise."""
        z = self.features(images)
        if self.sigma > 0:
            z = z + device_noise(z.shape, self.sigma, self.rng)
        return z.astype(np.float32, copy=False)
