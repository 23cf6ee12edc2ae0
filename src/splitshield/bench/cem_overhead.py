"""`splitshield bench cem-overhead CONFIG`: epoch time with CEM over epoch time without, in one process.

Both models are built from the same config (the "with" one gets ``{name: cem}`` appended, or keeps its own CEM
entry; the "without" one has every CEM entry removed) and train in alternation, one epoch each, the order flipping
every epoch, so a load change on a shared machine hits both alike. An epoch's time covers the training pass and
the defenses' epoch hooks (CEM's mixture fit included), not the test-set evaluation. The ratio is reported per
epoch and as the median over epochs 2.. (epoch 1 has no fit yet, so CEM only captures features there).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import dataclass

import torch
import yaml

from splitshield.bench import BENCHMARKS
from splitshield.errors import OneLineParser
from splitshield.config import ExperimentConfig
from splitshield.resolve import load_experiment as load_config
from splitshield.errors import UserError
from splitshield.train.loop import TrainingSession, setup_training, train_epoch
from splitshield.parallel import select_device

@dataclass
class _Arm:
    """One model under test: a training session plus its step counter."""

    name: str
    session: TrainingSession
    step: int = 0


def _arm(name: str, cfg: ExperimentConfig, device: torch.device) -> _Arm:
    session = setup_training(cfg, device)
    session.defenses.setup(session.model, session.data, device)
    return _Arm(name, session)


def _epoch(arm: _Arm, epoch: int, device: torch.device) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one epoch; CPU time is less sensitive to other jobs' load."""
    t0, c0 = time.perf_counter(), time.process_time()
    s = arm.session
    s.defenses.on_epoch_start(epoch)
    _, arm.step = train_epoch(s.model, s.defenses, s.data, s.optimizer, s.scaler, epoch, arm.step, s.cfg, device)
    s.defenses.on_epoch_end(epoch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    s.scheduler.step()
    return seconds, cpu


def _configs(args: argparse.Namespace) -> tuple[ExperimentConfig, ExperimentConfig]:
    """(with CEM, without CEM) from one config; --cem KEY=VALUE replaces the config's own CEM entry."""
    overrides = list(args.overrides) + [f"train.epochs={args.epochs}", "train.progress=false"]
    if args.train_size:
        overrides.append(f"data.train_size={args.train_size}")
    if args.max_steps:
        overrides.append(f"train.max_steps_per_epoch={args.max_steps}")
    cfg = load_config(args.config, overrides)
    without = [d.to_config() for d in cfg.defenses if d.name != "cem"]
    with_cem = [d.to_config() for d in cfg.defenses]
    if args.cem or len(without) == len(cfg.defenses):
        params = {key: yaml.safe_load(value) for key, _, value in (item.partition("=") for item in args.cem)}
        with_cem = without + [{"name": "cem", **params}]
    raw = cfg.to_dict()
    return load_config({**raw, "defenses": with_cem}), load_config({**raw, "defenses": without})


@BENCHMARKS.register("cem-overhead")
def cem_overhead(argv: list[str]) -> int:
    """Median epoch-time ratio of training with CEM over without (same config, alternating epochs)."""
    p = OneLineParser(prog="splitshield bench cem-overhead", description=__doc__.splitlines()[0])
    p.add_argument("config", help="YAML config (CEM is appended unless the config already has it)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--cem", action="append", default=[], metavar="KEY=VALUE",
                   help="CEM hyper-parameter for the 'with' arm, e.g. --cem covariance=full")
    p.add_argument("--epochs", type=int, default=3, help="epochs per arm (>= 2; epoch 1 has no CEM fit yet)")
    p.add_argument("--train-size", type=int, help="train on a deterministic subset of this many images")
    p.add_argument("--max-steps", type=int, help="cap on batches per epoch")
    args = p.parse_args(argv)
    if args.epochs < 2:
        raise UserError("--epochs must be >= 2: CEM starts in epoch 2, after the first mixture fit")
    with_cfg, without_cfg = _configs(args)
    device = select_device(with_cfg.train.device)
    arms = [_arm("with", with_cfg, device), _arm("without", without_cfg, device)]
    load0 = os.getloadavg()
    print(f"config {args.config}: {with_cfg.model.name} on {with_cfg.data.name}, "
          f"{len(arms[0].session.data.train)} train images, device {device}, torch threads {torch.get_num_threads()}, "
          f"load average {load0[0]:.2f}")
    print(f"with:    {[d.to_config() for d in with_cfg.defenses]}")
    print(f"without: {[d.to_config() for d in without_cfg.defenses]}")
    ratios, cpu_ratios = [], []
    for epoch in range(args.epochs):
        order = arms if epoch % 2 == 0 else arms[::-1]  # alternate who goes first
        times = {arm.name: _epoch(arm, epoch, device) for arm in order}
        ratio = times["with"][0] / times["without"][0]
        cpu_ratio = times["with"][1] / times["without"][1]
        if epoch > 0:
            ratios.append(ratio)
            cpu_ratios.append(cpu_ratio)
        print(f"epoch {epoch + 1}: with {times['with'][0]:.2f}s  without {times['without'][0]:.2f}s  "
              f"ratio {ratio:.3f}  (CPU time ratio {cpu_ratio:.3f})"
              f"{'  (no CEM term yet)' if epoch == 0 else ''}  load {os.getloadavg()[0]:.2f}")
    print(f"median CPU-time ratio (with/without CEM, epochs 2-{args.epochs}): {statistics.median(cpu_ratios):.3f}")
    print(f"median epoch-time ratio (with/without CEM, epochs 2-{args.epochs}): {statistics.median(ratios):.3f}")
    return 0
