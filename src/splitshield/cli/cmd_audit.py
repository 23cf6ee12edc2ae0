"""splitshield audit RUN_DIR: the CEM paper's entropy bounds for a trained run (see evaluation/entropy.py)."""
from __future__ import annotations

import argparse


def _fmt(value: object, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _audit(args: argparse.Namespace) -> int:
    from splitshield.data import build_data
    from splitshield.errors import UserError
    from splitshield.evaluation.entropy import audit
    from splitshield.runs import write_result
    from splitshield.train.build import load_run

    if args.components_per_class < 1:
        raise UserError(f"--components-per-class must be >= 1, got {args.components_per_class}")
    run = load_run(args.run_dir, args.device)
    data = build_data(run.cfg.data, run.cfg.seed, train_shuffle=False)
    record = audit(run, data.train, components_per_class=args.components_per_class, covariance=args.covariance,
                   max_samples=args.max_samples)
    path = write_result(args.run_dir, "audit", record)
    print(f"run {args.run_dir} (epoch {record['epoch']}): noise std {record['noise_std']:.4g}, "
          f"{record['samples']} training features of dim {record['feature_dim']}, input dim {record['input_dim']}, "
          f"{record['components_per_class']} {record['covariance']} components per class")
    print(f"H(x) reference: {record['h_ref']} nats ({record['h_ref_meaning']})")
    if record["degenerate"]:
        print(f"degenerate: {record['reason']}; MSE lower bound 0 (vacuous)")
    print(f"{'class':>8s} {'weight':>7s} {'L_C':>12s} {'H(x|z) >=':>12s} {'MSE >=':>11s}")
    for row in record["per_class"]:
        print(f"{row['class']:>8d} {row['weight']:7.3f} {_fmt(row['l_c'], '12.2f')} "
              f"{_fmt(row['h_cond'], '12.2f')} {_fmt(row['mse_bound'], '11.4e')}")
    print(f"{'overall':>8s} {1.0:7.3f} {_fmt(record['l_c'], '12.2f')} {_fmt(record['h_cond'], '12.2f')} "
          f"{_fmt(record['mse_bound'], '11.4e')}")
    print(f"saved {path}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("audit", help="relative conditional-entropy bound and MSE lower bound of a trained run")
    p.add_argument("run_dir")
    p.add_argument("--covariance", choices=("diagonal", "full", "isotropic"), default="diagonal",
                   help="mixture covariance used for the bound (default diagonal)")
    p.add_argument("--components-per-class", type=int, default=3)
    p.add_argument("--max-samples", type=int, help="use only the first N training images")
    p.add_argument("--device", default="cpu")
    p.set_defaults(handler=_audit)
