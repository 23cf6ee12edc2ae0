"""`splitshield bench cem-step`: cost of one CEM batch step (Eq. 5-7, forward + backward) per covariance mode."""
from __future__ import annotations

import os
import statistics
import time

import torch

from splitshield.bench import BENCHMARKS
from splitshield.errors import OneLineParser


@BENCHMARKS.register("cem-step")
def cem_step(argv: list[str]) -> int:
    """Milliseconds per CEM batch step (paper variant) for the full, diagonal and isotropic covariance modes."""
    from splitshield.defenses import _mixture as mx

    p = OneLineParser(prog="splitshield bench cem-step", description=__doc__)
    p.add_argument("--dim", type=int, default=392, help="feature dimension D (quick-fmnist: 392)")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--per-class", type=int, default=3, help="components per class")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--modes", nargs="+", default=["diagonal", "isotropic", "full"],
                   choices=["diagonal", "isotropic", "full"])
    args = p.parse_args(argv)
    g = torch.Generator().manual_seed(0)
    n = 60_000
    feats = torch.rand(n, args.dim, generator=g)
    labels = torch.randint(0, args.classes, (n,), generator=g)
    print(f"D={args.dim} k={args.classes * args.per_class} B={args.batch} threads={torch.get_num_threads()} "
          f"load average {os.getloadavg()[0]:.2f}")
    for mode in args.modes:
        fit = mx.fit_mixture(feats, labels, args.classes, args.per_class, mode, 5, generator=g)
        means, weights = fit.means.flatten(0, 1), fit.weights.flatten()
        cov = fit.cov.flatten(0, 1)
        times = []
        for r in range(args.repeats + 1):
            z = torch.rand(args.batch, args.dim, generator=g, requires_grad=True)
            y = torch.randint(0, args.classes, (args.batch,), generator=g)
            t0 = time.perf_counter()
            comp = mx.assign_batch(z, y, fit.means)
            loss, _, _ = mx.paper_step(z, comp, means, weights, cov, n, 0.025 ** 2, mode)
            loss.backward()
            if r:  # the first repeat warms up
                times.append(time.perf_counter() - t0)
        print(f"{mode:10s} {1000 * statistics.median(times):10.2f} ms per batch step (median of {args.repeats})")
    return 0
