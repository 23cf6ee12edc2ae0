"""The export manifest (JSON next to the model file) and the hashes that tie an export to its server."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from splitshield.errors import UserError

MANIFEST_VERSION = 1


def state_hash(*modules: torch.nn.Module) -> str:
    """sha256 over the tensors of ``modules`` (names, dtypes, shapes, bytes) in a fixed order.

    Export hashes the whole trained split model and the server hashes the same model before it drops the edge,
    so equal hashes mean the client's encoder and the server's cloud come from the same checkpoint.
    """
    h = hashlib.sha256()
    for i, module in enumerate(modules):
        for name, tensor in sorted(module.state_dict().items()):
            t = tensor.detach().cpu().contiguous()
            h.update(f"{i}:{name}:{t.dtype}:{tuple(t.shape)};".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class Manifest:
    format: str  # "onnx" | "torchscript"
    model_file: str  # relative to the manifest's folder
    file_sha256: str
    model_hash: str  # state_hash of the trained split model (matches the server's /v1/model)
    input_shape: list[int]  # (C, H, W) of one image, float32 in [0, 1], NCHW
    feature_shape: list[int]  # (C, H, W) of one transmitted feature
    sigma: float  # std of the Gaussian noise the device adds to every feature
    class_names: list[str]
    dataset: str
    run_dir: str
    transforms: list[str] = field(default_factory=list)  # defense transforms baked into the graph
    check: dict[str, Any] = field(default_factory=dict)  # export check: max_abs_diff, images, atol
    dtype: str = "float32"
    version: int = MANIFEST_VERSION
    # "edge": images in, features out (the device); "cloud": features in, logits out (the server).
    part: str = "edge"

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


def manifest_path(model_path: str) -> str:
    return os.path.splitext(model_path)[0] + ".json"


def find_manifest(path: str) -> str:
    """Accept a run directory, an export folder, a manifest or a model file; return the manifest path."""
    candidates = []
    if os.path.isdir(path):
        candidates += [os.path.join(path, "export", "edge.json"), os.path.join(path, "edge.json")]
    elif path.endswith(".json"):
        candidates.append(path)
    else:
        candidates.append(manifest_path(path))
    for cand in candidates:
        if os.path.isfile(cand):
            return cand
    raise UserError(f"no export manifest found for {path} (looked for {', '.join(candidates)}); "
                    "run 'splitshield export RUN_DIR' first")


def read_manifest(path: str) -> tuple[Manifest, str]:
    """The manifest and the absolute path of its model file (whose sha256 is verified)."""
    mpath = find_manifest(path)
    try:
        with open(mpath, encoding="utf-8") as fh:
            raw = json.load(fh)
        manifest = Manifest(**raw)
    except (OSError, ValueError, TypeError) as exc:
        raise UserError(f"export manifest {mpath} is unreadable ({str(exc)[:100]}); re-run 'splitshield export'")
    if manifest.version != MANIFEST_VERSION:
        raise UserError(f"export manifest {mpath} has version {manifest.version}, this splitshield reads "
                        f"{MANIFEST_VERSION}; re-run 'splitshield export'")
    model = os.path.join(os.path.dirname(os.path.abspath(mpath)), manifest.model_file)
    if not os.path.isfile(model):
        raise UserError(f"model file {model} named by {mpath} is missing; re-run 'splitshield export'")
    if file_sha256(model) != manifest.file_sha256:
        raise UserError(f"model file {model} does not match the sha256 in {mpath} (modified or truncated); "
                        "re-run 'splitshield export'")
    return manifest, model
