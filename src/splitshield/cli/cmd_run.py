"""splitshield run CONFIG: the main job for one config — train, attack, audit, report (each step resumable)."""
from __future__ import annotations

import argparse

from splitshield.cli.common import add_config_args


def _run(args: argparse.Namespace) -> int:
    from splitshield.experiments.grid import write_manifest
    from splitshield.experiments.pipeline import attack_names, run_pipeline
    from splitshield.experiments.report import write_report
    from splitshield.experiments.spec import GridCommon, Task
    from splitshield.resolve import run_dir_for
    from splitshield.cli.common import config_from_args

    cfg = config_from_args(args)
    run_dir = args.out or run_dir_for(cfg)
    names = attack_names(cfg, args.attack)  # validated before any training starts
    result = run_pipeline(cfg, run_dir, attacks=names, protocols=args.protocol or ["train"], audit=not args.no_audit,
                          device=args.device)
    from splitshield import parallel

    if not parallel.is_main():  # torchrun: rank 0 attacks, audits and reports
        return 0
    # The run folder gets the same manifest as a grid folder (one task, itself), so `report` treats both alike.
    grid = GridCommon(name=cfg.name, base=args.config, set=list(args.overrides), seeds=[cfg.seed], attacks=names,
                      protocols=args.protocol or ["train"], runs=run_dir, out=run_dir,
                      audit=not args.no_audit)
    write_manifest(grid, "run", [Task("run", False, cfg.seed, None, cfg, run_dir)], args.argv)
    print(f"run: {run_dir}")
    print(f"test accuracy: {result.train['test_accuracy']:.4f} after {result.train['epochs']} epochs")
    for key, record in result.attacks.items():
        print(f"{key}: MSE {record['mse']:.5f}  PSNR {record['psnr']:.2f} dB  SSIM {record['ssim']:.4f}  "
              f"(mean-image MSE {record['baseline']['mse']:.5f})")
    if result.audit is not None:
        bound = result.audit["mse_bound"]
        print(f"audit: MSE lower bound (Theorem 1) {bound:.4e}" + (" (vacuous: no noise on z)"
                                                                    if result.audit["degenerate"] else ""))
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
    p.add_argument("--device", default="cpu", help="device for attacks and the audit (training uses train.device)")
    p.set_defaults(handler=_run)
