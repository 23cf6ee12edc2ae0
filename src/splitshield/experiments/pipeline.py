"""One experiment end to end: train (or resume), attack, audit; every finished step is reused.

A step is skipped when its stored result matches what would be computed now: training when the metrics log
reaches the configured epochs, an attack when results/attack-<name>-<protocol>.json has the same resolved attack
config and seed, the audit when it was taken at the same epoch. So `splitshield run`, grids and sweeps all resume
an interrupted experiment at the step where it stopped, and never redo finished work.
"""
from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any, Iterator, Optional, Sequence

from splitshield.config import ExperimentConfig
from splitshield.errors import ConfigError
from splitshield.experiments.results import RunResult
from splitshield.handle import Run
from splitshield.runs import AUDIT, EFFICIENCY, TRAIN, AttackKey, ResultSink, RunFolder

log = logging.getLogger(__name__)

DEFAULT_ATTACKS = ("decoder",)


def attack_names(cfg: ExperimentConfig, names: Optional[Sequence[str]] = None) -> list[str]:
    """The attacks to run: ``names`` if given, else the config's ``attacks:`` list, else the decoder attack."""
    from splitshield.attacks import ATTACKS

    chosen = list(names) if names else [spec.name for spec in cfg.attacks] or list(DEFAULT_ATTACKS)
    for name in chosen:
        ATTACKS.get(name)  # an unknown name is a one-line error listing the valid ones
    return chosen


def trained(run_dir: str, epochs: int) -> bool:
    folder = RunFolder(run_dir)
    done = folder.metrics()
    return bool(done) and done[-1]["epoch"] >= epochs and folder.read(TRAIN) is not None


def ensure_trained(cfg: ExperimentConfig, run_dir: str, sink: Optional[ResultSink] = None) -> bool:
    """Train ``cfg`` into ``run_dir``, resume it if interrupted, or do nothing if finished. True if it trained."""
    return train_or_reuse(cfg, run_dir, sink)[0]


def train_or_reuse(cfg: ExperimentConfig, run_dir: str, sink: Optional[ResultSink] = None
                   ) -> tuple[bool, ExperimentConfig]:
    """``ensure_trained``, also returning the run's resolved config as config.yaml holds it (read at most once:
    the pipeline hands it to its ``Run``)."""
    from splitshield.resolve import resolve
    from splitshield.runs import load_run_config
    from splitshield.train import train
    from splitshield.train.checkpoint import CHECKPOINT

    cfg = resolve(cfg)
    finished = trained(run_dir, cfg.train.epochs)
    # A finished run without its checkpoint is an archived one (scripts/archive-runs.sh keeps results, not
    # weights): its stored results are reused; a step that needs the model fails in one line (Run.loaded).
    if finished or os.path.exists(os.path.join(run_dir, CHECKPOINT)):
        stored = resolve(load_run_config(run_dir))
        if stored.digest() != cfg.digest():
            raise ConfigError(f"{run_dir} holds a run of another config (hash {stored.digest()[:8]}, wanted "
                              f"{cfg.digest()[:8]}); choose another output folder or delete it")
        if finished:
            return False, stored
        train(cfg, resume_dir=run_dir, sink=sink)
        return True, stored
    train(cfg, out=run_dir, sink=sink)  # saves exactly this resolution as config.yaml
    return True, cfg


def stored_attack(run: "Run", name: str, protocol: str, seed: int, params: Optional[dict] = None
                  ) -> Optional[dict[str, Any]]:
    """The stored result of attack ``name`` under ``protocol`` if it was made with the same config and seed."""
    from splitshield.evaluation.attacking import resolve_attack_config

    stored = run.folder.read(AttackKey(name, protocol))
    if stored is None or stored.get("seed") != seed:
        return None
    wanted = asdict(resolve_attack_config(run.config, name, params))
    return stored if stored.get("config") == wanted else None


@contextmanager
def run_lock(run_dir: str) -> Iterator[None]:
    """Hold an exclusive lock on ``run_dir`` (a ``<run_dir>.lock`` file beside it) while working in it.

    Grids share run folders (an experiment common to two grids is trained once), and parallel executors or two
    grid commands may reach the same folder at once: the second waits, then finds the work done and reuses it.
    flock is released by the OS if the holder dies, so a crashed run never leaves a stale lock.
    """
    from splitshield import parallel

    if parallel.launched() and int(os.environ.get("RANK", "0")) != 0:
        yield  # under torchrun all ranks work in one folder together; rank 0 holds the lock for the job
        return
    try:
        import fcntl
    except ImportError:  # Windows: no flock; concurrent grids on one folder are then the user's to avoid
        yield
        return
    path = os.path.abspath(run_dir).rstrip(os.sep) + ".lock"
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def run_pipeline(cfg: ExperimentConfig, run_dir: str, *, attacks: Optional[Sequence[str]] = None,
                 protocols: Sequence[str] = ("train",), audit: bool = True, attack_seed: Optional[int] = None,
                 device: str = "cpu", sink: Optional[ResultSink] = None) -> RunResult:
    """Train, then every (attack, protocol), then the entropy audit and the efficiency count; returns all records.
    Every stored result also goes to ``sink`` (a results database) when given."""
    with run_lock(run_dir):
        return _pipeline(cfg, run_dir, attacks, protocols, audit, attack_seed, device, sink)


def _pipeline(cfg: ExperimentConfig, run_dir: str, attacks: Optional[Sequence[str]], protocols: Sequence[str],
              audit: bool, attack_seed: Optional[int], device: str, sink: Optional[ResultSink]) -> RunResult:
    from splitshield import parallel

    started = time.perf_counter()
    names = attack_names(cfg, attacks)
    seed = cfg.seed if attack_seed is None else attack_seed
    did_train, stored_cfg = train_or_reuse(cfg, run_dir, sink)
    computed = ["train"] if did_train else []
    if not parallel.is_main():  # under torchrun: training was the ranks' shared work; rank 0 does the rest
        return RunResult(run_dir, computed=computed)
    # One handle for every step below: config.yaml is not read again, data and model are built once.
    run = Run(run_dir, device=device, sink=sink, config=stored_cfg)
    for name in names:
        for protocol in protocols:
            if stored_attack(run, name, protocol, seed) is None:
                run.attack(name, protocol, seed=seed)
                computed.append(AttackKey(name, protocol).text)
    stored_audit = run.result(AUDIT) if audit else None
    if audit and (stored_audit is None or stored_audit.get("epoch") != run.loaded.epoch):
        run.audit()
        computed.append("audit")
    if run.result(EFFICIENCY) is None:  # cheap (one image through flop_counter, 20 timed passes): every run has it
        from splitshield.evaluation.efficiency import split_efficiency

        run.folder.write(EFFICIENCY, split_efficiency(run.model, latency=True).to_dict())
    log.info("%s: %s", run_dir, "computed " + ", ".join(computed) if computed else "all steps reused")
    result = RunResult.from_folder(run.folder)
    result.computed, result.seconds = computed, time.perf_counter() - started
    return result
