"""splitshield export RUN_DIR --format onnx|torchscript: the edge encoder for the device, checked after export."""
from __future__ import annotations

import argparse


def _export(args: argparse.Namespace) -> int:
    from splitshield.deploy.export import export_run

    manifest, path = export_run(args.run_dir, args.format, args.out, args.check_images, args.atol)
    check = manifest.check
    print(f"model: {path[:-5]}{'.onnx' if manifest.format == 'onnx' else '.pt'}")
    print(f"manifest: {path}")
    print(f"device noise sigma: {manifest.sigma:g} (added by the client at run time)")
    if manifest.transforms:
        print(f"defense transforms in the graph: {', '.join(manifest.transforms)}")
    print(f"check: max abs diff {check['max_abs_diff']:.3g} vs PyTorch on {check['images']} test images "
          f"(atol {check['atol']:g})")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export the edge encoder (ONNX or TorchScript) with a checked manifest")
    p.add_argument("run_dir", help="a trained run directory")
    p.add_argument("--format", choices=("onnx", "torchscript"), default="onnx")
    p.add_argument("--out", help="output folder (default RUN_DIR/export)")
    p.add_argument("--check-images", type=int, default=64, help="test images for the export check (default 64)")
    p.add_argument("--atol", type=float, default=1e-4, help="max abs difference allowed by the check")
    p.set_defaults(handler=_export)
