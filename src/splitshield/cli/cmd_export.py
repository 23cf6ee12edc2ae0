"""splitshield export RUN_DIR [--part edge|cloud] --format onnx|torchscript: the edge encoder for the device, or
the cloud part for the server (ONNX), checked against PyTorch after export."""
from __future__ import annotations

import argparse


def _export(args: argparse.Namespace) -> int:
    from splitshield.errors import UserError

    if args.part == "cloud":
        from splitshield.deploy.cloud_export import export_cloud

        if args.format != "onnx":
            raise UserError("the cloud part exports to onnx only (the torch backend serves the checkpoint "
                            "itself); use --format onnx")
        manifest, path = export_cloud(args.run_dir, out_dir=args.out, check_count=args.check_images,
                                      atol=args.atol)
        check = manifest.check
        print(f"model: {path[:-5]}.onnx")
        print(f"manifest: {path}")
        print(f"check: max abs diff {check['max_abs_diff']:.3g} in the logits vs PyTorch on {check['features']} "
              f"real features (atol {check['atol']:g}), top-1 agreement {check['agree_top1']:.3f}")
        return 0
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
    p = sub.add_parser("export", help="export the edge encoder (ONNX or TorchScript) or the cloud part (ONNX) "
                                      "with a checked manifest")
    p.add_argument("run_dir", help="a trained run directory")
    p.add_argument("--part", choices=("edge", "cloud"), default="edge",
                   help="edge: the device's encoder (default); cloud: the server's part (onnx only)")
    p.add_argument("--format", choices=("onnx", "torchscript"), default="onnx")
    p.add_argument("--out", help="output folder (default RUN_DIR/export)")
    p.add_argument("--check-images", type=int, default=64, help="test images for the export check (default 64)")
    p.add_argument("--atol", type=float, default=1e-4, help="max abs difference allowed by the check")
    p.set_defaults(handler=_export)
