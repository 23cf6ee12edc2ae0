"""`splitshield bench executors`: wall time of one 4-run grid under the local, process and ray executors.

Each executor runs the grid from scratch in its own temporary folder with its own results database (nothing is
written under runs/), so no run is reused; the tables must come out identical. The default grid is built in: one
defense (Gaussian noise) x {w/o, w/ CEM} x 2 seeds on the synthetic data set, a few seconds of training and a small
decoder attack per run, so the figures show the executors' overheads next to short runs; ``--grid`` times any table
grid instead (its ``runs`` folder is replaced by the temporary one).
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from typing import Any

import torch
import yaml

from splitshield.bench import BENCHMARKS
from splitshield.errors import OneLineParser

BASE: dict[str, Any] = {
    "name": "bench-executors",
    "seed": 0,
    "data": {"name": "synthetic", "batch_size": 32, "eval_batch_size": 64, "augment": True},
    "model": {"name": "vgg11_bn", "cut": 2, "width": 0.25},
    "train": {"epochs": 3, "lr": 0.05, "schedule": "multistep", "milestones": [2], "progress": False},
    "attacks": [{"name": "decoder", "epochs": 2, "train_size": 128, "blocks": 2, "channels": 16, "score_size": 64}],
}
GRID: dict[str, Any] = {
    "name": "bench-executors", "base": "base.yaml", "seeds": [0, 1], "protocols": ["train"], "audit": False,
    "arms": [{"label": ""}, {"label": "+CEM", "add": [{"name": "cem", "lam": 16}]}],
    "rows": [{"label": "Noise", "defenses": [{"name": "gaussian_noise", "sigma": 0.05}]}],
}


def _builtin_grid(folder: str, epochs: int) -> str:
    base = dict(BASE, train=dict(BASE["train"], epochs=epochs))
    for name, body in (("base.yaml", base), ("grid.yaml", GRID)):
        with open(os.path.join(folder, name), "w", encoding="utf-8") as fh:
            yaml.safe_dump(body, fh)
    return os.path.join(folder, "grid.yaml")


@BENCHMARKS.register("executors")
def executors(argv: list[str]) -> int:
    """Seconds of wall time per executor for the same grid, and whether the tables agree."""
    from splitshield.experiments.grid import execute
    from splitshield.experiments.spec import TableConfig, load_grid, table_tasks
    from splitshield.experiments.tables import build_table, columns_for, to_markdown

    p = OneLineParser(prog="splitshield bench executors", description=__doc__)
    p.add_argument("--grid", help="table grid YAML (default: the built-in 4-run grid on synthetic data)")
    p.add_argument("--epochs", type=int, default=3, help="training epochs of the built-in grid's runs (default 3; "
                   "each adds ~0.7 s per run on one idle core)")
    p.add_argument("--executors", nargs="+", default=["local", "process", "ray"], metavar="NAME")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads per run, local included (default 1: on a loaded 2-core machine 2 threads "
                        "made training 10x slower here)")
    p.add_argument("--workers", type=int, default=None,
                   help="parallel runs for process and ray (default: CPU cores / threads)")
    args = p.parse_args(argv)
    if args.threads < 1 or (args.workers is not None and args.workers < 1):
        p.error("--threads and --workers must be >= 1")
    cpus = os.cpu_count() or 1
    workers = args.workers or max(1, cpus // args.threads)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(args.threads)  # the local executor runs in this process
    scratch = tempfile.mkdtemp(prefix="splitshield-bench-executors-")
    print(f"{cpus} CPU cores, load average {os.getloadavg()[0]:.2f}; local: 1 process x {args.threads} "
          f"thread(s); process/ray: {workers} workers x {args.threads} thread(s)")
    times: dict[str, float] = {}
    tables: dict[str, str] = {}
    try:
        source = os.path.abspath(args.grid) if args.grid else _builtin_grid(scratch, args.epochs)
        for name in args.executors:
            folder = os.path.join(scratch, name)
            os.makedirs(folder)
            grid = load_grid(source, TableConfig, [f"runs={os.path.join(folder, 'runs')}"])
            tasks = table_tasks(grid)
            options: dict[str, Any] = {}
            startup = 0.0
            if name == "process":
                options = {"workers": workers, "threads": args.threads}
            elif name == "ray":
                try:
                    import ray
                except ImportError:
                    print("ray: not installed (pip install 'splitshield[ray]'), skipped")
                    continue
                t0 = time.perf_counter()
                ray.init(num_cpus=workers * args.threads, include_dashboard=False, logging_level="WARNING")
                startup = time.perf_counter() - t0
                options = {"threads": args.threads}
            t0 = time.perf_counter()
            try:
                results = execute(tasks, grid, name, db=os.path.join(folder, "results.sqlite"), **options)
            finally:
                if name == "ray":
                    ray.shutdown()
            times[name] = time.perf_counter() - t0 + startup
            ok = sum(r.ok for r in results)
            tables[name] = to_markdown(build_table(grid.name, results, columns_for(grid.attacks, grid.protocols,
                                                                                   grid.efficiency)))
            extra = f" (of which {startup:.1f} s starting Ray)" if startup else ""
            print(f"{name:8s} {times[name]:7.1f} s for {len(tasks)} runs, {ok} ok{extra}")
    finally:
        torch.set_num_threads(threads_before)
        shutil.rmtree(scratch, ignore_errors=True)
    if len(tables) > 1:
        print("same table under every executor:", "yes" if len(set(tables.values())) == 1 else "NO")
    print("grid wall time: " + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in times.items()))
    return 0
