"""`splitshield bench gpu-check`: exercise every GPU code path once and fail loudly (scripts/gpu-check.sh).

On the device given (default cuda), with the paper-cifar10 preset on synthetic CIFAR-shaped data (no download) and
its default numerics (float16 AMP on CUDA):
1. one epoch (``--steps`` steps) of every defense stack of the table: noise + CEM in each covariance mode, BiDO in
   both forms, ResSFL, PATROL, SiftFunnel, Dropout, NoPeek; prints images/s and peak memory of each, and fails on a
   non-finite loss or metric;
2. an interrupted run resumed (the CPU checkpoint format on this device);
3. the decoder, GAN, rMLE and kNN attacks and the entropy audit on the noise + CEM run;
4. ``torchrun --nproc_per_node 1 -m splitshield train`` (the data-parallel path with one process);
5. one training step under ``torch.cuda.set_sync_debug_mode("warn")``, listing the host synchronisations it saw.
The last line says PASS or FAIL. ``--device cpu --steps 2`` runs the same script on a CPU (the test suite does).
"""
from __future__ import annotations

import math
import os
import subprocess
import sys
import tempfile
import time
import warnings
from typing import Any, Callable

import torch

from splitshield.bench import BENCHMARKS
from splitshield.errors import OneLineParser

NOISE = {"name": "gaussian_noise", "sigma": 0.025}
STACKS: list[tuple[str, list[dict[str, Any]]]] = [
    ("noise+cem diagonal", [NOISE, {"name": "cem", "covariance": "diagonal"}]),
    ("noise+cem isotropic", [NOISE, {"name": "cem", "covariance": "isotropic"}]),
    ("noise+cem full", [NOISE, {"name": "cem", "covariance": "full"}]),
    ("noise+cem official", [NOISE, {"name": "cem", "variant": "official"}]),
    ("bido hsic paper", [{"name": "bido", "measure": "hsic", "form": "paper"}]),
    ("bido hsic authors", [{"name": "bido", "measure": "hsic", "form": "authors"}]),
    ("bido coco authors", [{"name": "bido", "measure": "coco", "form": "authors"}]),
    ("ressfl", [{"name": "ressfl", "pretrain_epochs": 1}]),
    ("noise_arl", [NOISE, {"name": "ressfl", "measure": "mse", "pretrain_epochs": 1}]),
    ("patrol", [{"name": "patrol", "pretrain_epochs": 1}]),
    ("siftfunnel", [{"name": "siftfunnel"}]),
    ("dropout+nopeek", [{"name": "dropout"}, {"name": "nopeek"}]),
]


def _config(device: str, steps: int, defenses: list[dict[str, Any]], epochs: int = 1) -> Any:
    from splitshield.resolve import load_experiment

    here = os.path.join(os.path.dirname(__file__), "..", "..", "..", "configs", "paper-cifar10.yaml")
    path = os.path.normpath(here) if os.path.isfile(os.path.normpath(here)) else "configs/paper-cifar10.yaml"
    return load_experiment(path, ["data.name=synthetic-cifar", f"train.epochs={epochs}", f"train.device={device}",
                                  f"train.max_steps_per_epoch={steps}", "train.progress=false",
                                  "data.test_size=512", f"defenses={defenses}"])


def _finite(record: dict[str, Any]) -> bool:
    return all(math.isfinite(v) for v in record.values() if isinstance(v, float))


@BENCHMARKS.register("gpu-check")
def gpu_check(argv: list[str]) -> int:
    """Every defense stack, resume, attacks, audit, torchrun and a sync scan on a GPU; last line PASS or FAIL."""
    from splitshield.runs import RunFolder
    from splitshield.train import train

    p = OneLineParser(prog="splitshield bench gpu-check", description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--steps", type=int, default=30, help="training steps per epoch")
    p.add_argument("--out", help="working folder (default: a temporary one)")
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device visible; run on a GPU machine, or --device cpu for a smoke run")
        print("gpu-check: FAIL")
        return 1
    out = args.out or tempfile.mkdtemp(prefix="splitshield-gpu-check-")
    failures: list[str] = []
    cuda = args.device.startswith("cuda")
    print(f"device {args.device}" + (f" ({torch.cuda.get_device_name()})" if cuda else "") + f", torch "
          f"{torch.__version__}, work in {out}", flush=True)

    def check(label: str, fn: Callable[[], str]) -> None:
        try:
            print(f"{label}: {fn()}", flush=True)
        except Exception as exc:  # report and continue: the point is to see every failure in one run
            failures.append(f"{label}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
            print(f"{label}: FAILED {failures[-1]}", flush=True)

    def one_stack(label: str, defenses: list[dict[str, Any]]) -> str:
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        cfg = _config(args.device, args.steps, defenses)
        result = train(cfg, out=os.path.join(out, label.replace(" ", "-")))
        record = RunFolder(result.run_dir).metrics()[-1]
        if not _finite(record):
            raise FloatingPointError(f"non-finite metric in {record}")
        rate = args.steps * cfg.data.batch_size / record["epoch_seconds"]
        memory = f", peak memory {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB" if cuda else ""
        return f"{rate:.0f} images/s{memory}, loss {record['train_loss']:.4f}, acc {record['test_accuracy']:.3f}"

    for label, defenses in STACKS:
        check(f"train {label}", lambda label=label, defenses=defenses: one_stack(label, defenses))

    def resume() -> str:
        from splitshield.train import loop

        cfg = _config(args.device, args.steps, [NOISE, {"name": "cem"}], epochs=2)
        real, calls = loop.train_epoch, {"n": 0}

        def dies_in_epoch_2(*a: Any, **k: Any) -> Any:
            calls["n"] += 1
            if calls["n"] == 2:
                raise KeyboardInterrupt
            return real(*a, **k)

        folder = os.path.join(out, "resume")
        loop.train_epoch = dies_in_epoch_2
        try:
            train(cfg, out=folder)
        except KeyboardInterrupt:
            pass
        finally:
            loop.train_epoch = real
        result = train(cfg, resume_dir=folder)
        return f"interrupted in epoch 2, resumed to epoch {result.epochs}, test accuracy {result.test_accuracy:.3f}"

    check("interrupt and resume", resume)

    def attacks() -> str:
        from splitshield.data import build_data
        from splitshield.evaluation.attacking import run_attack
        from splitshield.evaluation.entropy import audit
        from splitshield.train.build import load_run

        run = load_run(os.path.join(out, "noise+cem-diagonal"), args.device)
        data = build_data(run.cfg.data, run.cfg.seed, train_shuffle=False)
        small = {"train_size": 1024, "score_size": 256}
        parts = []
        for name, params in (("decoder", {"epochs": 1}), ("gan", {"epochs": 1, "decoder_epochs": 1}),
                             ("rmle", {"steps": 20}), ("knn", {})):
            r = run_attack(run, name, "train", {**small, **params}, store=False, data=data)
            if not math.isfinite(r["mse"]):
                raise FloatingPointError(f"{name}: non-finite MSE")
            parts.append(f"{name} MSE {r['mse']:.4f}")
        a = audit(run, data.train, max_samples=2048)
        parts.append(f"audit I(x;z) <= {a['mi_bound']:.1f} nats")
        return ", ".join(parts)

    check("attacks and audit", attacks)

    def torchrun() -> str:
        folder = os.path.join(out, "torchrun")
        cfg_path = os.path.join(out, "torchrun.yaml")
        with open(cfg_path, "w", encoding="utf-8") as fh:
            fh.write(_config(args.device, args.steps, [NOISE, {"name": "cem"}]).to_yaml())
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "-m",
                               "splitshield", "-q", "--results-db", "none", "train", cfg_path, "--out", folder],
                              capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0:
            raise RuntimeError((proc.stderr or proc.stdout).strip().splitlines()[-1][:200])
        return f"ok ({time.perf_counter() - t0:.0f} s)"

    check("torchrun --nproc_per_node 1", torchrun)

    def syncs() -> str:
        if not cuda:
            return "skipped (CUDA only)"
        from splitshield.train.loop import setup_training, train_epoch

        cfg = _config(args.device, 2, [NOISE, {"name": "cem"}])
        session = setup_training(cfg)
        train_epoch(session.model, session.defenses, session.data, session.optimizer, session.scaler, 0, 0, cfg,
                    session.device)  # epoch 1: the mixture fit, so the next step has the CEM term
        session.defenses.on_epoch_end(0)
        cfg1 = _config(args.device, 1, [NOISE, {"name": "cem"}])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                train_epoch(session.model, session.defenses, session.data, session.optimizer, session.scaler, 1, 2,
                            cfg1, session.device)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        where = sorted({f"{os.path.basename(w.filename)}:{w.lineno}" for w in caught
                        if "synchroniz" in str(w.message)})
        return f"{len(where)} synchronising call sites in one step" + (": " + ", ".join(where) if where else "")

    check("sync scan", syncs)
    for failure in failures:
        print(f"FAILED {failure}")
    print(f"gpu-check: {'PASS' if not failures else 'FAIL'} ({len(failures)} failures)")
    return 0 if not failures else 1
