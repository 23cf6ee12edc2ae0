"""`splitshield bench attack-strength RUN_DIR`: is the run's decoder attack as strong as its budget allows?

Runs, on the same victim and protocol, the decoder attack at the run's budget (its ``attacks:`` entry, the quick
budget; for a tapered decoder also the same budget untapered, which shows what the taper costs), the same attack
with 4x the epochs (and 4x the patience, so that a plateau that is only slow cannot end it), that budget with 2x the
channels (a wider decoder, never tapered), and the kNN lookup (no training: the floor). Prints each attack's MSE,
PSNR, SSIM, epochs and wall time, and on the last line the ratio quick / best: at most 1.15 means more budget and
capacity buy less than 15% (docs/attacks.md, "How strong is the attacker").
Nothing is stored in the run folder (its attack results stay those of `run`/`table`).
"""
from __future__ import annotations

import time
from typing import Any

from splitshield.bench import BENCHMARKS
from splitshield.errors import OneLineParser


def arms(decoder: Any, knn_k: int) -> list[tuple[str, str, dict[str, Any]]]:
    """(label, attack, params) of the comparison, from the run's resolved decoder config."""
    longer = {"epochs": 4 * decoder.epochs,
              "patience": None if decoder.patience is None else 4 * decoder.patience}
    untapered = [("quick budget, no taper", "decoder", {"taper": False})] if decoder.taper else []
    return [("quick budget", "decoder", {}), *untapered,  # what the taper costs in strength, and saves in time
            ("4x epochs", "decoder", longer),
            # the strongest arm drops the taper too: a tapered quick decoder is compared with the full-width one
            ("4x epochs, 2x channels" + (", no taper" if decoder.taper else ""), "decoder",
             {**longer, "channels": 2 * decoder.channels, "taper": False}),
            (f"kNN (k={knn_k})", "knn", {"k": knn_k, "train_size": decoder.train_size})]


@BENCHMARKS.register("attack-strength")
def attack_strength(argv: list[str]) -> int:
    """Decoder attack at the run's budget vs 4x epochs, 2x channels and kNN; last line: quick / best MSE."""
    from splitshield.data import build_data
    from splitshield.evaluation.attacking import resolve_attack_config, run_attack, victim_accuracy
    from splitshield.parallel import select_device
    from splitshield.runs import RunFolder
    from splitshield.train.build import load_run

    p = OneLineParser(prog="splitshield bench attack-strength", description=__doc__.splitlines()[0])
    p.add_argument("run_dir", help="a trained run folder (e.g. of configs/quick-fmnist-noise.yaml)")
    p.add_argument("--protocol", default="train", choices=("train", "infer"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--knn-k", type=int, default=10)
    p.add_argument("--only", nargs="+", metavar="LABEL", help="run only these arms (by the start of their label)")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    run = load_run(args.run_dir, select_device(args.device))
    data = build_data(run.cfg.data, run.cfg.seed, train_shuffle=False)
    decoder = resolve_attack_config(run.cfg, "decoder")
    acc = victim_accuracy(RunFolder(args.run_dir))
    print(f"victim {args.run_dir} (test accuracy {'n/a' if acc is None else f'{acc:.4f}'}), protocol "
          f"{args.protocol}; quick decoder: "
          f"{decoder.blocks} blocks x {decoder.channels} channels ({decoder.stem} stem"
          f"{', tapered' if decoder.taper else ''}), up to {decoder.epochs} "
          f"epochs (patience {decoder.patience}), lr {decoder.lr}, {decoder.train_size or 'all'} attacker images",
          flush=True)
    results = []
    for label, name, params in arms(decoder, args.knn_k):
        if args.only and not any(label.startswith(o) for o in args.only):
            continue
        t0 = time.perf_counter()
        r = run_attack(run, name, args.protocol, params, seed=args.seed, store=False, data=data)
        seconds = time.perf_counter() - t0
        info = r["info"]
        epochs = f"{info['epochs_run']} epochs (best {info['best_epoch']})" if "epochs_run" in info else "no training"
        print(f"{label:24s} MSE {r['mse']:.5f}  PSNR {r['psnr']:.2f} dB  SSIM {r['ssim']:.4f}  {epochs}, "
              f"{r['status']}, {seconds:.0f} s", flush=True)
        results.append((label, r))
    if not results or results[0][0] != "quick budget":
        return 0
    baseline = results[0][1]["baseline"]["mse"]
    print(f"mean-image baseline MSE {baseline:.5f}")
    best_label, best = min(results, key=lambda lr: lr[1]["mse"])
    print(f"quick / best MSE: {results[0][1]['mse'] / best['mse']:.3f} (best: {best_label})")
    return 0
