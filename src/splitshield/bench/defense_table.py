"""`splitshield bench defense-table`: every defense preset trained, attacked and costed, as one Markdown table.

Columns: defense, test accuracy, decoder-attack test MSE (train protocol) next to the mean-image baseline, edge
parameters and MACs (torch.utils.flop_counter). Runs live in --runs DIR/<preset>; a finished run or attack is
reused, so an interrupted table resumes where it stopped.
"""
from __future__ import annotations

import glob
import json
import os

from splitshield.bench import BENCHMARKS
from splitshield.cli.main import OneLineParser

PRESETS = os.path.join("configs", "defenses")


def _row(preset: str, runs: str, overrides: list[str], attack_overrides: dict, with_cem: bool) -> str:
    from splitshield.attacks import run_attack
    from splitshield.config import load_config
    from splitshield.evaluation.efficiency import split_efficiency
    from splitshield.runs import load_run, read_results
    from splitshield.train import train

    name = os.path.splitext(os.path.basename(preset))[0] + ("+cem" if with_cem else "")
    extra = list(overrides)
    if with_cem:  # the preset's defenses with CEM appended, as one whole-list override
        specs = [spec.to_config() for spec in load_config(preset).defenses] + [{"name": "cem"}]
        extra.append("defenses=" + json.dumps(specs))
    cfg = load_config(preset, extra)
    run_dir = os.path.join(runs, name)
    if not os.path.exists(os.path.join(run_dir, "checkpoint.pt")) or _unfinished(run_dir, cfg.train.epochs):
        if os.path.exists(os.path.join(run_dir, "checkpoint.pt")):
            train(cfg, resume_dir=run_dir)
        else:
            train(cfg, out=run_dir)
    results = read_results(run_dir)
    attack = results.get("attack-decoder-train")
    if attack is None:
        attack = run_attack(run_dir, "decoder", "train", attack_overrides)
    run = load_run(run_dir)
    eff = split_efficiency(run.model)
    accuracy = results.get("train", {}).get("test_accuracy")
    defenses = " + ".join(s.name for s in cfg.defenses) or "(bottleneck only)"
    return (f"| {name} | {defenses} | {accuracy:.4f} | {attack['mse']:.4f} | {attack['baseline']['mse']:.4f} | "
            f"{eff.edge_params:,} | {eff.edge_macs / 1e6:.3f} |")


def _unfinished(run_dir: str, epochs: int) -> bool:
    from splitshield.runs import read_metrics

    done = read_metrics(run_dir)
    return not done or done[-1]["epoch"] < epochs


@BENCHMARKS.register("defense-table")
def defense_table(argv: list[str]) -> int:
    """Train + decoder-attack every defense preset; print defense, accuracy, MSE, edge params and MACs."""
    p = OneLineParser(prog="splitshield bench defense-table", description=__doc__)
    p.add_argument("presets", nargs="*", help=f"preset YAML files (default: all of {PRESETS}/*.yaml)")
    p.add_argument("--runs", default=os.path.join("runs", "defense-table"), help="where the runs are kept")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override every preset, e.g. --set train.epochs=2")
    p.add_argument("--attack-set", action="append", default=[], metavar="KEY=VALUE",
                   help="override the decoder attack's config, e.g. --attack-set epochs=3")
    p.add_argument("--with-cem", action="store_true", help="also a '+cem' row for every preset")
    args = p.parse_args(argv)
    import yaml

    attack_overrides = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.attack_set)}
    presets = args.presets or sorted(glob.glob(os.path.join(PRESETS, "*.yaml")))
    from splitshield.config import load_config

    for preset in presets:  # every preset must load before any run starts
        load_config(preset, args.overrides)
    print("| preset | defenses | test acc | decoder MSE (train) | mean-image MSE | edge params | edge MMACs |")
    print("|---|---|---|---|---|---|---|")
    for preset in presets:
        for with_cem in ([False, True] if args.with_cem else [False]):
            print(_row(preset, args.runs, args.overrides, attack_overrides, with_cem), flush=True)
    return 0
