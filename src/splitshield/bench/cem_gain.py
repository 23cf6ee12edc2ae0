"""`splitshield bench cem-gain CONFIG`: what adding CEM does to the decoder attack's MSE and to accuracy.

For each seed, trains the config as given (the base defense, e.g. Gaussian noise) and once per CEM setting
(``--arm paper`` = ``{name: cem}``, ``--arm official`` = ``{name: cem, variant: official}``, or any
``--arm "paper,covariance=full"``), then runs the decoder attack (train protocol: the attacker fits on training
features, is scored on the test set) on every run. Prints one line per run, a per-arm summary (mean MSE gain over
the base and mean accuracy change, over seeds), and on the last line the paper arm's mean MSE gain.
"""
from __future__ import annotations

import os
import statistics
from typing import Any

import yaml

from splitshield.bench import BENCHMARKS
from splitshield.errors import OneLineParser
from splitshield.resolve import load_experiment as load_config
from splitshield.errors import UserError


def _arm_spec(text: str) -> dict[str, Any]:
    variant, *pairs = [part.strip() for part in text.split(",") if part.strip()]
    spec: dict[str, Any] = {"name": "cem", "variant": variant}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise UserError(f"--arm {text!r}: expected VARIANT[,KEY=VALUE...], e.g. paper,covariance=full")
        spec[key] = yaml.safe_load(value)
    return spec


@BENCHMARKS.register("cem-gain")
def cem_gain(argv: list[str]) -> int:
    """Decoder-attack MSE gain and accuracy change from adding CEM, over seeds."""
    from splitshield.experiments.pipeline import ensure_trained, stored_attack
    from splitshield.handle import Run

    p = OneLineParser(prog="splitshield bench cem-gain", description=__doc__.splitlines()[0])
    p.add_argument("config", help="YAML config of the base defense (CEM entries are removed from it)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--arm", action="append", default=[], help="CEM setting: VARIANT[,KEY=VALUE...] (repeatable; "
                   "default: paper and official)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--attack", action="append", default=[], metavar="KEY=VALUE",
                   help="decoder attack hyper-parameter, e.g. --attack epochs=5 --attack train_size=10000")
    p.add_argument("--out", default="runs/cem-gain", help="folder for the run directories")
    args = p.parse_args(argv)
    arms = {"base": None, **{text: _arm_spec(text) for text in (args.arm or ["paper", "official"])}}
    attack = {key: yaml.safe_load(value) for key, _, value in (a.partition("=") for a in args.attack)}
    rows: dict[str, list[tuple[float, float]]] = {name: [] for name in arms}
    for seed in args.seeds:
        for name, spec in arms.items():
            cfg = load_config(args.config, list(args.overrides) + [f"seed={seed}", "train.progress=false"])
            raw = cfg.to_dict()
            raw["defenses"] = [d for d in raw["defenses"] if d["name"] != "cem"] + ([spec] if spec else [])
            cfg = load_config(raw)
            out = os.path.join(args.out, f"{name.replace(',', '-').replace('=', '')}-s{seed}")
            ensure_trained(cfg, out)  # trains, resumes an interrupted run, or reuses a finished one
            run = Run(out)
            record = stored_attack(run, "decoder", "train", seed, attack) or run.attack(
                "decoder", "train", params=attack, seed=seed).record
            acc = float(record["victim_accuracy"])
            rows[name].append((float(record["mse"]), acc))
            print(f"seed {seed} {name:28s} test acc {acc:.4f}  decoder MSE {record['mse']:.5f}  ({out})", flush=True)
    base = rows.pop("base")
    # The last line quotes the first paper arm (the headline); with none, the first arm, named.
    headline = next((name for name in rows if name.startswith("paper")), next(iter(rows)))
    label = "first paper arm" if headline.startswith("paper") else headline
    last = 0.0
    for name, values in rows.items():
        gains = [100 * (m / b[0] - 1) for (m, _), b in zip(values, base)]
        dacc = [100 * (a - b[1]) for (_, a), b in zip(values, base)]
        print(f"{name:28s} MSE gain {statistics.mean(gains):+.1f}% (per seed {', '.join(f'{g:+.1f}' for g in gains)})"
              f"  accuracy change {statistics.mean(dacc):+.2f} points (per seed "
              f"{', '.join(f'{d:+.2f}' for d in dacc)})")
        if name == headline:
            last = statistics.mean(gains)
    print(f"mean decoder-MSE gain of CEM ({label}) over {len(args.seeds)} seeds: {last:+.1f}%")
    return 0
