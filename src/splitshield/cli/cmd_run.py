"""splitshield run CONFIG: the main job for one config — train, attack, audit, report (each step resumable)."""
from __future__ import annotations

import argparse

from splitshield.cli.common import add_config_args


def _run(args: argparse.Namespace) -> int:
    from splitshield import parallel
    from splitshield.cli.common import config_from_args
    from splitshield.experiments.grid import write_run_manifest
    from splitshield.experiments.pipeline import attack_names, run_pipeline
    from splitshield.experiments.report import write_report
    from splitshield.resolve import run_dir_for

    cfg = config_from_args(args)
    run_dir = args.out or run_dir_for(cfg)
    names = attack_names(cfg, args.attack)  # validated before any training starts
    protocols = args.protocol or ["train"]
    result = run_pipeline(cfg, run_dir, attacks=names, protocols=protocols, audit=not args.no_audit,
                          device=parallel.select_device(args.device).type, sink=args.sink)
    if not parallel.is_main():  # torchrun: rank 0 attacks, audits and reports
        return 0
    write_run_manifest(run_dir, names, protocols, args.argv)  # `report` reads a run folder like a grid's
    print(f"run: {run_dir}")
    print(f"test accuracy: {result.train['test_accuracy']:.4f} after {result.train['epochs']} epochs")
    for key, record in sorted(result.attacks.items()):
        print(f"{key}: MSE {record['mse']:.5f}  PSNR {record['psnr']:.2f} dB  SSIM {record['ssim']:.4f}  "
              f"(mean-image MSE {record['baseline']['mse']:.5f}; {record.get('status', 'ok')})")
    audit = result.audit
    if audit is not None and audit["degenerate"]:
        print("audit: no additive noise on z, so nothing bounds I(x; z)")
    elif audit is not None:
        print(f"audit: I(x; z) <= {audit['mi_bound']:.1f} nats ({audit['mi_bound_bits_per_dim']:.4f} bits per "
              "input dimension)")
    print(f"report: {write_report(run_dir)}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="train, attack, audit and report one config (resumable)")
    add_config_args(p)
    p.add_argument("--out", help="run directory (default runs/<dataset>-<model>-<defenses>-<hash>-s<seed>)")
    p.add_argument("--attack", action="append", metavar="NAME",
                   help="attack to run (repeatable; default: the config's attacks list, else decoder)")
    p.add_argument("--protocol", action="append", choices=("train", "infer"),
                   help="attack protocol (repeatable; default train)")
    p.add_argument("--no-audit", action="store_true", help="skip the conditional-entropy audit")
    p.add_argument("--device", default="auto", help="device for attacks and the audit (default auto: the GPU when "
                   "there is one, like training; training uses train.device)")
    p.set_defaults(handler=_run)
