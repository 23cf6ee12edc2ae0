"""Export the edge encoder (normalisation, blocks, bottleneck and deterministic defense transforms).

How the run's defense stack is exported (see docs/deploy.md):
- members that add Gaussian noise (``gaussian_noise``, and ``cem`` when it adds its own) are *not* put in the
  graph: the device adds N(0, sigma^2) after the encoder at run time (edge.py), with sigma = ``defenses.noise_std()``
  from training.
  Random ops inside ONNX have runtime-specific seeding, so noise outside the graph is the only way to make
  "same seed, same prediction" checkable, and it keeps the noise visible and auditable on the device;
- members whose eval-mode transform is the identity (NoPeek, CEM, ... act only through losses) are skipped;
- deterministic non-identity transforms (e.g. top-k) are traced into the graph, before the noise;
- transforms that draw randomness at inference (random dropout, Laplace noise) or come after the noise are refused
  with a one-line error: the graph could not reproduce them faithfully.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
import torch
from torch import nn

from splitshield.deploy.manifest import Manifest, file_sha256, manifest_path, state_hash
from splitshield.errors import UserError

log = logging.getLogger(__name__)
FORMATS = ("onnx", "torchscript")
SUFFIX = {"onnx": ".onnx", "torchscript": ".pt"}


@dataclass
class TransformPlan:
    graph: list[nn.Module]  # deterministic transforms exported with the encoder, in order
    graph_names: list[str]
    sigma: float  # device noise std added after the graph
    skipped: list[str]  # identity at inference


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and bool(torch.equal(a, b))


def plan_transforms(members: Iterable[nn.Module], z: torch.Tensor) -> TransformPlan:
    """Classify each defense on a real edge output ``z`` (eval mode) and decide what goes where."""
    graph: list[nn.Module] = []
    names: list[str] = []
    skipped: list[str] = []
    noise_by: list[str] = []
    variance = 0.0
    for d in members:
        name = getattr(d, "registry_name", type(d).__name__)
        noise = d.noise() if hasattr(d, "noise") else None
        std = noise.std if noise is not None else 0.0
        if std > 0 and not noise.gaussian_only:
            raise UserError(f"defense {name!r} adds non-Gaussian noise, which the device runtime does not draw; "
                            "export supports gaussian_noise only (retrain with it, or deploy in PyTorch)")
        if std > 0:
            noise_by.append(name)
            variance += std ** 2
            continue
        with torch.no_grad(), torch.random.fork_rng():  # two seeds; leave the caller's RNG untouched
            torch.manual_seed(1)
            out1 = d.transform(z)
            torch.manual_seed(2)
            out2 = d.transform(z)
        if not _same(out1, out2):
            raise UserError(f"defense {name!r} is random at inference and cannot be exported; export supports "
                            "deterministic transforms and Gaussian noise (noise_std), remove it or deploy in PyTorch")
        if _same(out1, z):
            skipped.append(name)
            continue
        if noise_by:
            raise UserError(f"defense {name!r} transforms z after the noise of {noise_by[0]!r}; the device adds "
                            "noise after the exported graph, so put noise last in the defenses list")
        graph.append(d)
        names.append(name)
        z = out1
    return TransformPlan(graph, names, float(np.sqrt(variance)), skipped)


@contextlib.contextmanager
def staged_file(model_path: str) -> Iterator[str]:
    """A temporary file beside ``model_path``, moved there when the block succeeds and removed otherwise."""
    fd, tmp = tempfile.mkstemp(suffix=os.path.splitext(model_path)[1], dir=os.path.dirname(model_path) or ".")
    os.close(fd)
    try:
        yield tmp
        shutil.move(tmp, model_path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def assert_faithful(got: np.ndarray, ref: np.ndarray, atol: float, what: str, where: str) -> float:
    """The largest absolute difference of an exported model's outputs from PyTorch's; a one-line error above atol."""
    diff = float(np.abs(got - ref).max())
    if not np.isfinite(diff) or diff > atol:
        raise UserError(f"{what} differs from PyTorch by {diff:.3g} (> atol {atol:g}) {where}")
    return diff


def write_manifest(manifest: Manifest, path: str) -> str:
    with open(path + ".tmp", "w", encoding="utf-8") as fh:
        fh.write(manifest.to_json())
    os.replace(path + ".tmp", path)
    return path


class DeployedEncoder(nn.Module):
    """What the device runs before the noise: the edge (with its normalisation) and graph transforms."""

    def __init__(self, edge: nn.Module, transforms: list[nn.Module]) -> None:
        super().__init__()
        self.edge = edge
        self.transforms = nn.ModuleList(transforms)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.edge(x)
        for t in self.transforms:
            z = t.transform(z)
        return z


def export_onnx(module: nn.Module, example: torch.Tensor, path: str, *, input_name: str = "image",
                output_name: str = "features") -> None:
    """``module`` (one tensor in, one out) to ONNX with a dynamic batch dimension, quietly."""
    batch = torch.export.Dim("batch", min=1, max=65536)
    # The exporter prints progress to stdout and logs pass details at INFO: noise for an export command.
    quiet = {"onnxscript": logging.WARNING, "onnx_ir": logging.WARNING, "torch.onnx": logging.WARNING,
             # warns about torchvision detection ops this encoder never uses
             "torch.onnx._internal.exporter._registration": logging.ERROR}
    saved = {name: logging.getLogger(name).level for name in quiet}
    for name, level in quiet.items():
        logging.getLogger(name).setLevel(level)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")  # exporter FutureWarnings are not actionable for users
            # dynamic_shapes by position: the edge's forward names its input x, nn.Sequential names it input.
            torch.onnx.export(module, (example,), path, input_names=[input_name], output_names=[output_name],
                              dynamic_shapes=({0: batch},), dynamo=True, verbose=False, external_data=False)
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def _export_torchscript(module: nn.Module, example: torch.Tensor, path: str) -> None:
    # torch.jit is deprecated upstream but is still the one self-contained format libtorch/mobile load.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module, example, check_trace=False)
    traced.save(path)


def _run_export(path: str, fmt: str, x: np.ndarray) -> np.ndarray:
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        return session.run(None, {session.get_inputs()[0].name: x})[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = torch.jit.load(path, map_location="cpu")
    with torch.no_grad():
        return loaded(torch.from_numpy(x)).numpy()


def check_images(run, count: int) -> torch.Tensor:  # noqa: ANN001  (LoadedRun)
    """Up to ``count`` real test images in [0, 1] (the check must use the distribution the device will see)."""
    from splitshield.data import build_data, to_unit

    data = build_data(run.cfg.data, run.cfg.seed, train_shuffle=False)
    n = min(count, len(data.test))
    return to_unit(torch.stack([data.test[i][0] for i in range(n)]))


def export_run(run_dir: str, fmt: str = "onnx", out_dir: str | None = None, check_count: int = 64,
               atol: float = 1e-4) -> tuple[Manifest, str]:
    """Export, check on real test images, write model + manifest; returns (manifest, manifest path)."""
    from splitshield.runs import write_result
    from splitshield.train.build import load_run

    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    if check_count < 1:
        raise UserError(f"--check-images must be at least 1, got {check_count}")
    run = load_run(run_dir, "cpu")
    x = check_images(run, check_count)
    with torch.no_grad():
        z = run.model.edge(x)
    plan = plan_transforms(run.defenses, z)
    total = float(run.defenses.noise_std())
    if abs(total - plan.sigma) > 1e-12:  # noise_std of the stack and of its members must agree
        raise UserError(f"defense stack reports noise std {total} but its members add up to {plan.sigma}")
    encoder = DeployedEncoder(run.model.edge, plan.graph).eval()
    out_dir = out_dir or os.path.join(run_dir, "export")
    os.makedirs(out_dir, exist_ok=True)
    model_path = os.path.join(out_dir, "edge" + SUFFIX[fmt])
    with staged_file(model_path) as tmp:  # a failed export never leaves a half-written model beside a manifest
        try:
            (export_onnx if fmt == "onnx" else _export_torchscript)(encoder, x[:2].clone(), tmp)
        except UserError:
            raise
        except Exception as exc:  # exporter failures are many types; the user needs one line, not a trace
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise UserError(f"{fmt} export failed ({first[:150]}); try --format "
                            f"{'torchscript' if fmt == 'onnx' else 'onnx'}") from None
        with torch.no_grad():
            ref = encoder(x).numpy()
        diff = assert_faithful(_run_export(tmp, fmt, x.numpy()), ref, atol, f"exported {fmt} encoder",
                               f"on {len(x)} test images; the export is not faithful, do not deploy it")
    check = {"max_abs_diff": diff, "images": int(len(x)), "atol": atol, "format": fmt}
    manifest = Manifest(
        format=fmt, model_file=os.path.basename(model_path), file_sha256=file_sha256(model_path),
        model_hash=state_hash(run.model), input_shape=list(run.info.input_shape),
        feature_shape=list(run.model.feature_shape), sigma=plan.sigma, class_names=list(run.info.class_names),
        dataset=run.info.name, run_dir=os.path.abspath(run_dir), transforms=plan.graph_names, check=check)
    mpath = write_manifest(manifest, manifest_path(model_path))
    write_result(run_dir, "export", {**check, "model": os.path.abspath(model_path), "sigma": plan.sigma,
                                     "transforms": plan.graph_names, "skipped": plan.skipped})
    log.info("exported %s (%s) max abs diff %.3g on %d images", model_path, fmt, diff, len(x))
    return manifest, mpath
