"""Per-dimension spread of a run's features before its noise: total, within-class and between-class variance, on the
first N test images. Why: CEM's Eq. 7 and the noise both act on the features' variance relative to the noise's
(docs/cem.md, "Against its own knob"); this says which of the two spreads a defense shrank.

    python scripts/feature-spread.py RUN_DIR [RUN_DIR ...] [--images 2000]
"""
from __future__ import annotations

import argparse

import torch

import splitshield


def spread(path: str, images: int) -> dict[str, float]:
    run = splitshield.Run.open(path)
    test = run.data.test
    n = min(images, len(test))
    x = torch.stack([test[i][0] for i in range(n)])
    y = torch.tensor([int(test[i][1]) for i in range(n)])
    with torch.no_grad():
        z = run.model.edge(x).flatten(1).double()  # the encoder's output: before any defense's noise
    d = z.shape[1]
    total = float(((z - z.mean(0)) ** 2).sum(1).mean()) / d
    within = float(sum(((z[y == c] - z[y == c].mean(0)) ** 2).sum() for c in y.unique())) / n / d
    return {"dims": d, "rms": float(z.pow(2).mean().sqrt()), "variance": total, "within": within,
            "between": total - within, "accuracy": run.accuracy or float("nan")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--images", type=int, default=2000)
    args = parser.parse_args()
    print("| run | D | rms | variance / dim | within-class | between-class | between / within | accuracy |")
    print("|---|---|---|---|---|---|---|---|")
    for path in args.runs:
        s = spread(path, args.images)
        print(f"| {path} | {s['dims']} | {s['rms']:.4f} | {s['variance']:.5f} | {s['within']:.5f} | "
              f"{s['between']:.5f} | {s['between'] / s['within']:.3f} | {100 * s['accuracy']:.2f}% |")


if __name__ == "__main__":
    main()
