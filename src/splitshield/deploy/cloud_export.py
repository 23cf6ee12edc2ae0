"""Export the cloud part (features in, logits out) to ONNX for the server, checked against PyTorch.

The check feeds both the real features the server will receive: the run's test images through the edge and the
defense stack in eval mode (deterministic transforms, then the Gaussian noise the device adds; fixed seed).
Random features would exercise activations the trained cloud never sees (and hide a faulty BatchNorm fold).
The file sits next to the edge export as ``cloud.onnx`` with a ``cloud.json`` manifest (``part: cloud``) whose
``model_hash`` ties it to the checkpoint: the server re-exports a cloud whose hash no longer matches.
"""
from __future__ import annotations

import logging
import os
from typing import Optional

import torch

from splitshield.deploy.export import assert_faithful, check_images, export_onnx, staged_file, write_manifest
from splitshield.deploy.manifest import Manifest, file_sha256, read_manifest, state_hash
from splitshield.errors import UserError

log = logging.getLogger(__name__)
CLOUD_FILE = "cloud.onnx"


def cloud_manifest_path(run_dir: str, out_dir: Optional[str] = None) -> str:
    return os.path.join(out_dir or os.path.join(run_dir, "export"), "cloud.json")


def served_features(run, count: int, seed: int = 0) -> torch.Tensor:  # noqa: ANN001  (LoadedRun)
    """What the server receives for ``count`` real test images: edge output through the run's defense stack in
    eval mode (deterministic transforms and the Gaussian noise), drawn under a fixed seed."""
    x = check_images(run, count)
    with torch.no_grad(), torch.random.fork_rng():  # leave the caller's RNG untouched
        torch.manual_seed(seed)
        z = run.defenses.eval().transform(run.model.edge(x))
    return z.float().contiguous()


def onnx_session(path: str, *, threads: int):  # noqa: ANN201  (onnxruntime.InferenceSession)
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1  # one graph at a time: the batcher already serialises forwards
    # Idle pool threads spin by default; on a server whose event loop shares the cores that steals its CPU.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def fresh_cloud_export(run_dir: str, model_hash: str, out_dir: Optional[str] = None) -> Optional[str]:
    """The cloud ONNX file of this run if it exists, is intact and comes from the current checkpoint."""
    mpath = cloud_manifest_path(run_dir, out_dir)
    if not os.path.isfile(mpath):
        return None
    try:
        manifest, model = read_manifest(mpath)
    except UserError as exc:
        log.warning("ignoring cloud export: %s", exc)
        return None
    if manifest.part != "cloud" or manifest.model_hash != model_hash:
        log.warning("cloud export %s is from another checkpoint (hash %s, run %s); re-exporting", mpath,
                    manifest.model_hash[:12], model_hash[:12])
        return None
    return model


def export_cloud(run_dir: str, *, out_dir: Optional[str] = None, check_count: int = 64, atol: float = 1e-4,
                 record: bool = True, run=None) -> tuple[Manifest, str]:  # noqa: ANN001
    """Export, check on real served features, write ``cloud.onnx`` + ``cloud.json``; returns (manifest, path).

    ``record`` stores the check in RUN_DIR/results (the export command); the server's own export does not.
    """
    from splitshield.runs import write_result
    from splitshield.train.build import load_run

    if check_count < 1:
        raise UserError(f"--check-images must be at least 1, got {check_count}")
    run = run or load_run(run_dir, "cpu")
    z = served_features(run, check_count)
    cloud = run.model.cloud.eval()
    out_dir = out_dir or os.path.join(run_dir, "export")
    os.makedirs(out_dir, exist_ok=True)
    model_path = os.path.join(out_dir, CLOUD_FILE)
    with staged_file(model_path) as tmp:  # never a half-written model beside a stale manifest
        try:
            export_onnx(cloud, z[:2].clone(), tmp, input_name="features", output_name="logits")
        except Exception as exc:  # exporter failures are many types; the user needs one line, not a trace
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise UserError(f"onnx export of the cloud part failed ({first[:150]}); serve with --backend torch")
        with torch.no_grad():
            ref = cloud(z).numpy()
        got = onnx_session(tmp, threads=1).run(None, {"features": z.numpy()})[0]
        diff = assert_faithful(got, ref, atol, "exported cloud", f"in the logits on {len(z)} real features; the "
                               "export is not faithful, serve with --backend torch")
    check = {"max_abs_diff": diff, "features": int(len(z)), "atol": atol, "format": "onnx",
             "agree_top1": float((got.argmax(1) == ref.argmax(1)).mean())}
    manifest = Manifest(
        format="onnx", model_file=CLOUD_FILE, file_sha256=file_sha256(model_path), model_hash=state_hash(run.model),
        input_shape=list(run.info.input_shape), feature_shape=list(run.model.feature_shape),
        sigma=float(run.defenses.noise_std()), class_names=list(run.info.class_names), dataset=run.info.name,
        run_dir=os.path.abspath(run_dir), check=check, part="cloud")
    mpath = write_manifest(manifest, cloud_manifest_path(run_dir, out_dir))
    if record:
        write_result(run_dir, "export-cloud", {**check, "model": os.path.abspath(model_path)})
    log.info("exported cloud %s, max abs diff %.3g in the logits on %d features", model_path, diff, len(z))
    return manifest, mpath
