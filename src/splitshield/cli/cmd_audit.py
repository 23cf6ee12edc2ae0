"""splitshield audit RUN_DIR: the CEM paper's entropy bounds for a trained run (see evaluation/entropy.py)."""
from __future__ import annotations

import argparse


def _fmt(value: object, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _audit(args: argparse.Namespace) -> int:
    from splitshield.data import build_data
    from splitshield.errors import UserError
    from splitshield.evaluation.entropy import audit
    from splitshield.runs import AUDIT, RunFolder
    from splitshield.train.build import load_run

    if args.components_per_class < 1:
        raise UserError(f"--components-per-class must be >= 1, got {args.components_per_class}")
    from splitshield.parallel import select_device

    run = load_run(args.run_dir, select_device(args.device))
    data = build_data(run.cfg.data, run.cfg.seed, train_shuffle=False)
    record = audit(run, data.train, components_per_class=args.components_per_class, covariance=args.covariance,
                   max_samples=args.max_samples, h_x=args.h_x)
    path = RunFolder(args.run_dir, args.sink).write(AUDIT, record)
    print(f"run {args.run_dir} (epoch {record['epoch']}): noise std {record['noise_std']:.4g}, "
          f"{record['samples']} training features of dim {record['feature_dim']}, input dim {record['input_dim']}, "
          f"{record['components_per_class']} {record['covariance']} components per class")
    if record["degenerate"]:
        print(f"degenerate: {record['reason']}")
    else:
        print(f"I(x; z) <= {record['mi_bound']:.2f} nats = {record['mi_bound_bits_per_dim']:.4f} bits per input "
              "dimension (an upper bound on what z tells about x, for this noise)")
        kind = "lower bound on any attacker's MSE" if record["h_ref_is_true"] else "relative MSE index, NOT a bound"
        print(f"Theorem 1 with H(x) = {record['h_ref']} nats ({record['h_ref_meaning']}): {record['mse_index']:.4e}"
              f" ({kind})")
    print(f"{'class':>8s} {'weight':>7s} {'I(x;z) <=':>12s} {'MSE index':>11s}")
    for row in record["per_class"]:
        print(f"{row['class']:>8d} {row['weight']:7.3f} {_fmt(row['mi_bound'], '12.2f')} "
              f"{_fmt(row['mse_index'], '11.4e')}")
    print(f"saved {path}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("audit", help="upper bound on I(x; z) and Theorem 1's MSE figure of a trained run")
    p.add_argument("run_dir")
    p.add_argument("--covariance", choices=("diagonal", "full", "isotropic"), default="diagonal",
                   help="mixture covariance used for the bound (default diagonal)")
    p.add_argument("--components-per-class", type=int, default=3)
    p.add_argument("--max-samples", type=int, help="use only the first N training images")
    p.add_argument("--h-x", type=float, dest="h_x", help="the data's true differential entropy H(x) in nats, when "
                   "known (synthetic data): then the MSE figure is a lower bound; default: a relative index")
    p.add_argument("--device", default="auto", help="default: the GPU when there is one")
    p.set_defaults(handler=_audit)
