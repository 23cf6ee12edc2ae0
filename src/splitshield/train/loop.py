"""The one training loop. Read it top to bottom: build, (resume), then per epoch train -> evaluate -> log -> save.

Under torchrun the same loop runs in every process (train/distributed.py): each rank trains on its rows of the
global batch through DistributedDataParallel, and only rank 0 writes the run folder.
"""
from __future__ import annotations

import logging
import os
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn
# tqdm.std, not tqdm.auto: the asyncio class tqdm.auto resolves to calls iter() on the loader when it is built and
# iterates it again, so every epoch drew the loader's shuffle twice (and started its workers twice).
from tqdm.std import tqdm

from splitshield.config import ExperimentConfig
from splitshield.data import DataBundle, build_data, to_unit
from splitshield.defenses import DefenseStack, StepContext
from splitshield.errors import CheckpointError
from splitshield.models import SplitModel
from splitshield.precision import Numerics, full_precision, resolve_numerics
from splitshield.resolve import resolve, run_dir_for
from splitshield.runs import METRICS_FILE, TRAIN, ResultSink, RunFolder, append_jsonl, save_config
from splitshield import parallel
from splitshield.train import distributed
from splitshield.train.build import build_components
from splitshield.train.checkpoint import (CHECKPOINT, atomic_save, load_checkpoint, rng_state, seed_everything,
                                          set_rng_state)
from splitshield.train.optim import build_optimizer, build_scheduler

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    run_dir: str
    epochs: int
    test_accuracy: float
    seconds: float


@torch.no_grad()
def evaluate(model: SplitModel, defenses: DefenseStack, loader, device: torch.device) -> float:
    """Test accuracy on what the cloud actually receives (defense transforms applied, as deployed)."""
    was = model.training, defenses.training
    model.eval()
    defenses.eval()
    correct = total = 0
    for images, labels in loader:
        x, y = to_unit(images.to(device)), labels.to(device)
        logits = model.cloud(defenses.transform(model.edge(x)))
        correct += int((logits.argmax(1) == y).sum())
        total += len(y)
    if parallel.world_size() > 1:  # each rank evaluated its rows of the test set
        correct, total = (int(v) for v in parallel.all_sum(torch.tensor([correct, total], dtype=torch.float64)))
    model.train(was[0])
    defenses.train(was[1])
    return correct / max(total, 1)


class SplitForward(nn.Module):
    """One training forward pass, edge -> defense transforms -> cloud, as a module: the unit DDP wraps (DDP only
    synchronises gradients of passes made through its own forward). Returns (blocks, z_hat, z before the noise, z,
    logits)."""

    def __init__(self, model: SplitModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, defenses: DefenseStack
                ) -> tuple[Optional[list[torch.Tensor]], torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        blocks = self.model.edge.blocks(x) if defenses.needs_blocks else None
        z_hat = blocks[-1] if blocks is not None else self.model.edge(x)
        pre, z = defenses.transform_parts(z_hat)
        return blocks, z_hat, pre, z, self.model.cloud(z)


def numerics_for(cfg: ExperimentConfig, device: torch.device) -> Numerics:
    return resolve_numerics(cfg.train.precision, cfg.train.memory_format, device)


def train_epoch(model: SplitModel, defenses: DefenseStack, data: DataBundle, optimizer: torch.optim.Optimizer,
                scaler: torch.amp.GradScaler, epoch: int, step: int, cfg: ExperimentConfig,
                device: torch.device, forward: Optional[nn.Module] = None) -> tuple[dict[str, float], int]:
    """One epoch; ``forward`` is the DDP-wrapped ``SplitForward`` under torchrun (default: the plain pass).

    The forward pass runs under the run's autocast (precision.py); the task loss and the defenses' penalties are
    computed in float32 on float32 views of the step's tensors (sums of many small terms, kernels, log-determinants
    lose too much in 8 mantissa bits). A defense that runs a network of its own may use ``ctx.numerics``."""
    forward = SplitForward(model) if forward is None else forward
    numerics = numerics_for(cfg, device)
    model.train()
    defenses.train()
    sums: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros((), device=device))
    seen = 0
    lr = optimizer.param_groups[0]["lr"]
    batches = data.train_loader
    limit = cfg.train.max_steps_per_epoch
    bar = tqdm(batches, total=min(len(batches), limit or len(batches)), desc=f"epoch {epoch + 1}",
               disable=not cfg.train.progress or not parallel.is_main(), leave=False)
    for i, (images, labels) in enumerate(bar):
        if limit is not None and i >= limit:
            break
        x = numerics.tensor(data.augment(to_unit(images.to(device, non_blocking=True))))
        y = labels.to(device, non_blocking=True)
        with numerics.autocast():
            blocks, z_hat, pre, z, logits = forward(x, defenses)
        with full_precision(device.type):
            ctx = StepContext(x=x, y=y, z_hat=z_hat.float(), z=z.float(), logits=logits.float(), model=model,
                              epoch=epoch, step=step, lr=lr, z_pre_noise=pre.float(),
                              blocks=None if blocks is None else [b.float() for b in blocks], numerics=numerics)
            defenses.observe(ctx)
            loss = defenses.task_loss(ctx.logits, y)
            penalty = defenses.penalties(ctx)
            total = loss if penalty is None else loss + penalty
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(total).backward()
        scaler.step(optimizer)
        scaler.update()
        defenses.update(ctx)
        step += 1
        n = len(y)
        seen += n
        sums["loss"] += loss.detach() * n
        sums["correct"] += (logits.detach().argmax(1) == y).sum()
        for key, value in ctx.logs.items():
            sums[key] += value.float() * n
    if parallel.world_size() > 1:  # every rank's share, so rank 0 logs the epoch of the whole job
        keys = sorted(sums)
        summed = parallel.all_sum(torch.stack([sums[k].double() for k in keys]
                                                 + [torch.tensor(float(seen), dtype=torch.float64, device=device)]))
        sums, seen = dict(zip(keys, summed[:-1])), int(summed[-1])
    # One host synchronisation per epoch, not per step.
    stats = {key: float(value) / max(seen, 1) for key, value in sums.items()}
    stats["train_accuracy"] = stats.pop("correct")
    stats["train_loss"] = stats.pop("loss")
    return stats, step


def warn_if_collapsed(record: dict[str, float], num_classes: int) -> bool:
    """Warn when an epoch ends at chance accuracy (train or test) while a defense penalty outweighs the task loss.

    Why: a penalty such as CEM's lambda * L_C (hundreds of nats at D = 392) can make a constant encoder the optimum;
    training then keeps running and only the final accuracy shows it. True if it warned."""
    penalties = {k: v for k, v in record.items() if k.startswith("penalty/")}
    chance = 1.0 / max(num_classes, 1)
    accuracy = min(record.get("train_accuracy", 1.0), record.get("test_accuracy", 1.0))
    if not penalties or accuracy > 1.5 * chance:
        return False
    name, value = max(penalties.items(), key=lambda kv: kv[1])
    if value <= record.get("train_loss", 0.0):
        return False
    log.warning("epoch %d: accuracy %.3f is at chance level (1/%d) and %s = %.4g outweighs the task loss %.3f; "
                "the defense is collapsing the model: lower its weight (for CEM: the default lam is 0.1, collapse "
                "sets in near 1.5 per dimension, docs/cem.md)",
                int(record.get("epoch", 0)), accuracy, num_classes, name, value, record.get("train_loss", float("nan")))
    return True


@dataclass
class TrainingSession:
    """Everything one training run steps through; built once by ``setup_training`` (train, resume, benchmarks)."""

    cfg: ExperimentConfig
    device: torch.device
    data: DataBundle
    model: SplitModel
    defenses: DefenseStack
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    forward: Optional[nn.Module] = None  # DDP(SplitForward(model)) under torchrun; None: the plain pass


def setup_training(cfg: ExperimentConfig, device: Optional[torch.device] = None) -> TrainingSession:
    """Seed, data, model + defenses on the device, optimizer, schedule and AMP scaler for ``cfg``; under torchrun,
    this rank's data shard, batch norm over all ranks and the model in DDP."""
    device = device or parallel.select_device(cfg.train.device)
    rank, world = parallel.rank(), parallel.world_size()
    seed_everything(cfg.seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = cfg.train.cudnn_benchmark
    data = build_data(cfg.data, cfg.seed, rank=rank, world=world, pin_memory=device.type == "cuda")
    model, defenses = build_components(cfg, data.info, train_size=len(data.train))  # type: ignore[arg-type]
    if world > 1:
        # Statistics of the global batch, as one process computes them (per-rank batch norm would normalise each
        # B/N slice on its own and the ranks' running statistics would drift apart).
        distributed.sync_batchnorm(model, device)
        distributed.sync_batchnorm(defenses, device)  # the simulated attacker's decoder
        seed_everything(parallel.rank_seed(cfg.seed))  # after the shared-seed initialisation above
    numerics = numerics_for(cfg, device)
    numerics.module(model.to(device))
    numerics.module(defenses.to(device))
    optimizer = build_optimizer(cfg.train, model.parameters())
    scheduler = build_scheduler(cfg.train, optimizer)
    scaler = torch.amp.GradScaler(device.type, enabled=numerics.scaled)
    forward = distributed.wrap(SplitForward(model), device) if world > 1 else None
    return TrainingSession(cfg, device, data, model, defenses, optimizer, scheduler, scaler, forward)


def load_scaler_state(scaler: torch.amp.GradScaler, saved: dict) -> None:
    """The gradient scaler's state, where both sides have one: a checkpoint of a CPU (or bfloat16) run holds the
    empty state of a disabled scaler, which an enabled CUDA scaler refuses; it then starts from its defaults (the
    scale is re-learned in a few steps)."""
    if saved and scaler.is_enabled():
        scaler.load_state_dict(saved)
    elif scaler.is_enabled():
        log.warning("resuming without a gradient-scaler state (the checkpoint comes from a run without float16 AMP): "
                    "the loss scale starts afresh")


def _own_rng_state(state: dict) -> Optional[dict]:
    """This rank's RNG state from a checkpoint, or None (then seed afresh) if it was saved by another world size."""
    ranks, world = state.get("rng_ranks"), parallel.world_size()
    saved = len(ranks) if ranks is not None else 1
    if saved == world:
        return ranks[parallel.rank()] if ranks is not None else state["rng"]
    log.warning("resuming a run trained by %d process(es) with %d: valid, but not bit-identical to an "
                "uninterrupted run (each process has its own random stream)", saved, world)
    return state["rng"] if world == 1 else None


def train(cfg: ExperimentConfig, out: Optional[str] = None, *, resume_dir: Optional[str] = None,
          sink: Optional[ResultSink] = None) -> TrainResult:
    """Train ``cfg`` into a run directory; with ``resume_dir``, continue that run from its last checkpoint. The
    training result also goes to ``sink`` (a results database) when given.

    Under torchrun every process calls this; rank 0 alone writes the folder, the others return the same result."""
    cfg = resolve(cfg)  # every component with all its parameters: the config.yaml saved is the full resolution
    device = parallel.setup(cfg.train.device)  # joins torchrun's process group; alone, picks the device
    main = parallel.is_main()
    run_dir = resume_dir or out or run_dir_for(cfg)
    ckpt_path = os.path.join(run_dir, CHECKPOINT)
    if resume_dir:
        # Every rank reads the checkpoint rank 0 wrote last: wait until no rank can still be writing one (a rank
        # that stopped early would otherwise read the epoch before, resume elsewhere and hang in a collective).
        parallel.barrier()
    state = load_checkpoint(ckpt_path) if resume_dir else None
    if state is None and os.path.exists(ckpt_path):
        raise CheckpointError(f"{run_dir} already holds a trained run; use 'splitshield resume {run_dir}' or "
                              "choose another --out")
    session = setup_training(cfg, device)
    device, data, model, defenses = session.device, session.data, session.model, session.defenses
    optimizer, scheduler, scaler = session.optimizer, session.scheduler, session.scaler
    start_epoch, step = 0, 0
    if state is not None:
        model.load_state_dict(state["model"])
        defenses.load_state_dict(state["defenses"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        load_scaler_state(scaler, state.get("scaler", {}))
        data.set_rng_state(state["data_rng"])
        start_epoch, step = int(state["epoch"]), int(state["step"])
        own = _own_rng_state(state)
        if own is not None:
            set_rng_state(own)
        else:
            seed_everything(parallel.rank_seed(cfg.seed + start_epoch))
        log.info("resuming %s at epoch %d", run_dir, start_epoch + 1)
    else:
        if main:
            os.makedirs(run_dir, exist_ok=True)
            save_config(cfg, run_dir)
        defenses.setup(model, data, device)
    log.info("run %s: %s on %s, features %s, device %s, %s", run_dir, cfg.model.name, data.info.name,
             "x".join(map(str, model.feature_shape)), device, numerics_for(cfg, device).name)

    accuracy, started = float("nan"), time.perf_counter()
    for epoch in range(start_epoch, cfg.train.epochs):
        t0 = time.perf_counter()
        defenses.on_epoch_start(epoch)
        stats, step = train_epoch(model, defenses, data, optimizer, scaler, epoch, step, cfg, device,
                                  session.forward)
        defenses.on_epoch_end(epoch)
        accuracy = evaluate(model, defenses, data.test_loader, device)
        record = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"], "test_accuracy": accuracy,
                  "epoch_seconds": time.perf_counter() - t0, **stats}
        scheduler.step()
        # Each rank's own random streams, so a resumed job continues every rank where it stopped (a collective:
        # all ranks take part, rank 0 writes).
        rngs = parallel.all_gather_objects(rng_state())
        if not main:
            continue
        append_jsonl(os.path.join(run_dir, METRICS_FILE), record)
        log.info("epoch %d/%d  loss %.4f  train acc %.4f  test acc %.4f  (%.1fs)", epoch + 1, cfg.train.epochs,
                 stats["train_loss"], stats["train_accuracy"], accuracy, record["epoch_seconds"])
        warn_if_collapsed(record, data.info.num_classes)
        checkpoint = {
            "epoch": epoch + 1, "step": step, "train_size": len(data.train),  # type: ignore[arg-type]
            "model": model.state_dict(), "defenses": defenses.state_dict(),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
            "rng": rngs[0], "data_rng": data.rng_state(), "test_accuracy": accuracy,
        }
        if len(rngs) > 1:
            checkpoint["rng_ranks"] = rngs
        atomic_save(checkpoint, ckpt_path)
    if state is not None and start_epoch >= cfg.train.epochs:
        accuracy = float(state["test_accuracy"])  # resumed a finished run: nothing left to do
    seconds = time.perf_counter() - started
    if main:
        RunFolder(run_dir, sink, cfg).write(TRAIN, {"test_accuracy": accuracy, "epochs": cfg.train.epochs, "seconds": seconds,
                                        "feature_shape": list(model.feature_shape)})
    parallel.barrier()  # every rank returns once the results are on disk
    return TrainResult(run_dir, cfg.train.epochs, accuracy, seconds)
