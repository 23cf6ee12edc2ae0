"""`splitshield bench train-speed CONFIG`: images per second of training and of the decoder attack in each numeric
mode (float32 / bfloat16 autocast x contiguous / channels-last), measured in one process.

Training: the config's own loop (``train_epoch``: data, defenses and all) for ``--steps`` steps per repeat, after a
warm-up repeat; the attack: steps of the config's decoder attack (its ``attacks:`` entry) on batches of the run's
feature shape. Modes are interleaved within each repeat (so a change of machine load hits all of them), and each
figure is the median over repeats. The last line names the fastest mode and its ratio to float32 channels-first.
With ``--accuracy``, also trains the whole config once in float32 and once in the default mode and prints both
test accuracies (the default is adopted only where it stays within 0.3 points).
"""
from __future__ import annotations

import statistics
import time
from typing import Any

import torch
import torch.nn.functional as F

from splitshield.bench import BENCHMARKS
from splitshield.errors import OneLineParser
from splitshield.config import ExperimentConfig
from splitshield.resolve import load_experiment as load_config
from splitshield.precision import Numerics, resolve_numerics

MODES = (("fp32", "contiguous"), ("fp32", "channels_last"), ("bf16", "contiguous"), ("bf16", "channels_last"))


def _train_rate(cfg: ExperimentConfig, precision: str, memory_format: str, steps: int) -> Any:
    """A callable that runs ``steps`` training steps of ``cfg`` in this mode and returns images per second."""
    from splitshield.train.loop import setup_training, train_epoch

    run = load_config(cfg.to_dict(), [f"train.precision={precision}", f"train.memory_format={memory_format}",
                                      f"train.max_steps_per_epoch={steps}", "train.progress=false"])
    session = setup_training(run)
    state = {"epoch": 0, "step": 0}

    def measure() -> float:
        t0 = time.perf_counter()
        _, state["step"] = train_epoch(session.model, session.defenses, session.data, session.optimizer,
                                       session.scaler, state["epoch"], state["step"], run, session.device)
        state["epoch"] += 1
        return steps * run.data.batch_size / (time.perf_counter() - t0)

    return measure


def _attack_rate(cfg: ExperimentConfig, numerics: Numerics, feature_shape: tuple[int, ...],
                 image_shape: tuple[int, ...], steps: int) -> Any:
    from splitshield.attacks import ATTACKS
    from splitshield.config import ComponentSpec
    from splitshield.nets.decoder import ResidualDecoder

    spec = next((s for s in cfg.attacks if s.name == "decoder"), ComponentSpec("decoder"))
    acfg = ATTACKS.config_of(spec.name, spec.params, "attacks")
    torch.manual_seed(0)
    decoder = numerics.module(ResidualDecoder(feature_shape, image_shape, blocks=acfg.blocks,  # type: ignore
                                              channels=acfg.channels, stem=acfg.stem,
                                              taper=acfg.taper))
    opt = torch.optim.Adam(decoder.parameters(), lr=acfg.lr)
    z = numerics.tensor(torch.rand(acfg.batch_size, *feature_shape))
    x = torch.rand(acfg.batch_size, *image_shape)

    def measure() -> float:
        t0 = time.perf_counter()
        for _ in range(steps):
            with numerics.autocast():
                out = decoder(z)
            loss = F.mse_loss(out, x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return steps * acfg.batch_size / (time.perf_counter() - t0)

    return measure


def _accuracy(cfg: ExperimentConfig, precision: str, folder: str) -> float:
    from splitshield.train import train

    run = load_config(cfg.to_dict(), [f"train.precision={precision}", "train.memory_format=auto",
                                      "train.progress=false"])
    return train(run, out=folder).test_accuracy


@BENCHMARKS.register("train-speed")
def train_speed(argv: list[str]) -> int:
    """Training and decoder-attack images/s per numeric mode (fp32/bf16 x channels-first/last), one process."""
    p = OneLineParser(prog="splitshield bench train-speed", description=__doc__.splitlines()[0])
    p.add_argument("config", help="experiment YAML (its model, defenses and decoder attack are measured)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--steps", type=int, default=30, help="training / attack steps per repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--accuracy", metavar="FOLDER", help="also train the config fully in fp32 and in the default "
                   "mode into FOLDER/fp32 and FOLDER/auto and print both test accuracies")
    args = p.parse_args(argv)
    cfg = load_config(args.config, list(args.overrides))
    device = torch.device("cpu") if cfg.train.device in ("auto", "cpu") and not torch.cuda.is_available() else None
    print(f"threads {torch.get_num_threads()}, device {device or cfg.train.device}; default on this machine: "
          f"{resolve_numerics('auto', 'auto', device or 'cpu').name}", flush=True)
    train_runs = {mode: _train_rate(cfg, *mode, args.steps) for mode in MODES}
    from splitshield.data import build_data
    from splitshield.train.build import build_components

    info = build_data(cfg.data, cfg.seed).info
    model, _ = build_components(cfg, info, train_size=1)
    attack_runs = {mode: _attack_rate(cfg, resolve_numerics(*mode, "cpu"), model.feature_shape, info.input_shape,
                                      max(args.steps // 3, 1)) for mode in MODES}
    rates: dict[tuple[str, str, str], list[float]] = {}
    for repeat in range(args.repeats + 1):  # repeat 0 warms up (oneDNN primitive creation, allocator)
        for kind, runs in (("train", train_runs), ("attack", attack_runs)):
            order = MODES if repeat % 2 else MODES[::-1]
            for mode in order:
                rate = runs[mode]()
                if repeat:
                    rates.setdefault((kind, *mode), []).append(rate)
    for kind in ("train", "attack"):
        base = statistics.median(rates[(kind, "fp32", "contiguous")])
        for mode in MODES:
            med = statistics.median(rates[(kind, *mode)])
            print(f"{kind:6s} {mode[0]} {mode[1]:13s} {med:8.0f} img/s  x{med / base:.2f}  (repeats: "
                  f"{', '.join(f'{r:.0f}' for r in rates[(kind, *mode)])})", flush=True)
    if args.accuracy:
        import os

        acc32 = _accuracy(cfg, "fp32", os.path.join(args.accuracy, "fp32"))
        acc = _accuracy(cfg, "auto", os.path.join(args.accuracy, "auto"))
        print(f"test accuracy: fp32 {100 * acc32:.2f}%, default {100 * acc:.2f}% ({100 * (acc - acc32):+.2f} points)")
    best = max(MODES, key=lambda m: statistics.median(rates[("train", *m)]))
    ratio = statistics.median(rates[("train", *best)]) / statistics.median(rates[("train", "fp32", "contiguous")])
    print(f"fastest training mode: {best[0]} {best[1]}, x{ratio:.2f} the fp32 channels-first rate")
    return 0
