"""splitshield attack RUN_DIR --attack NAME --protocol train|infer / splitshield figure RUN_DIR ... --out PNG."""
from __future__ import annotations

import argparse

from splitshield.attacks._protocols import PROTOCOLS


def _attack(args: argparse.Namespace) -> int:
    from splitshield.evaluation.attacking import run_attack
    from splitshield.configtools import apply_overrides
    from splitshield.train.build import load_run

    from splitshield.parallel import select_device

    params = apply_overrides({}, args.overrides)
    run = load_run(args.run_dir, select_device(args.device))
    r = run_attack(run, args.attack, args.protocol, params, seed=args.seed, sink=args.sink)
    acc = "n/a" if r["victim_accuracy"] is None else f"{r['victim_accuracy']:.4f}"
    print(f"attack {r['attack']} ({r['protocol']} protocol, fit {r['split']['n_fit']} / val {r['split']['n_val']}"
          f" / scored {r['n']} images, {r['seconds']:.1f}s)")
    print(f"mse {r['mse']:.5f}  psnr {r['psnr']:.2f} dB  ssim {r['ssim']:.4f}  victim accuracy {acc}")
    b = r["baseline"]
    print(f"mean-image baseline: mse {b['mse']:.5f}  psnr {b['psnr']:.2f} dB  ssim {b['ssim']:.4f}")
    print(f"status: {r['status']}" + ("" if r["counts"] else " (this result does not count as evidence: "
                                      "docs/attacks.md, What counts)"))
    print(f"stored: {args.run_dir}/results/attack-{args.attack}-{args.protocol}.json")
    return 0


def _figure(args: argparse.Namespace) -> int:
    from splitshield.evaluation.figures import reconstruction_figure

    path = reconstruction_figure(args.run_dirs, args.attacks, args.protocol, args.out, labels=args.labels)
    print(f"figure: {path}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from splitshield.attacks import ATTACKS

    p = sub.add_parser("attack", help="run a model-inversion attack on a trained run and store its metrics")
    p.add_argument("run_dir", help="run directory written by 'splitshield train'")
    p.add_argument("--attack", required=True, choices=ATTACKS.names())
    p.add_argument("--protocol", required=True, choices=PROTOCOLS,
                   help="train: fit on training features, score on the test set; infer: fit on 90%% of the test "
                        "set, score on the other 10%%")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override an attack hyper-parameter, e.g. --set epochs=5 (on top of the run's attacks: "
                        "entry, else the paper defaults)")
    p.add_argument("--seed", type=int, default=0, help="attack seed (data split, noise, initialisation)")
    p.add_argument("--device", default="auto", help="torch device for the victim and the attacker (default: the "
                   "GPU when there is one)")
    p.set_defaults(handler=_attack)

    f = sub.add_parser("figure", help="draw originals and stored attack reconstructions as a PNG grid")
    f.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    f.add_argument("--attacks", nargs="+", default=["decoder", "gan", "rmle"], metavar="NAME")
    f.add_argument("--protocol", default="train", choices=PROTOCOLS)
    f.add_argument("--labels", nargs="+", help="one row label per run (default: the folder names)")
    f.add_argument("--out", required=True, help="PNG path, e.g. docs/figures/quick-fmnist.png")
    f.set_defaults(handler=_figure)
