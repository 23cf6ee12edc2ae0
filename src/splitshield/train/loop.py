"""The one training loop. Read it top to bottom: build, (resume), then per epoch train -> evaluate -> log -> save."""
from __future__ import annotations

import logging
import os
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Optional

import torch
from tqdm.auto import tqdm

from splitshield.config import ExperimentConfig
from splitshield.data import DataBundle, build_data, to_unit
from splitshield.defenses import DefenseStack, StepContext
from splitshield.errors import CheckpointError
from splitshield.models import SplitModel
from splitshield.runs import METRICS_FILE, append_jsonl, run_dir_for, save_config, write_result
from splitshield.train.build import build_components
from splitshield.train.checkpoint import (CHECKPOINT, atomic_save, load_checkpoint, rng_state, seed_everything,
                                          set_rng_state)
from splitshield.train.optim import build_optimizer, build_scheduler, select_device

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
    model.train(was[0])
    defenses.train(was[1])
    return correct / max(total, 1)


def train_epoch(model: SplitModel, defenses: DefenseStack, data: DataBundle, optimizer: torch.optim.Optimizer,
                scaler: torch.amp.GradScaler, epoch: int, step: int, cfg: ExperimentConfig,
                device: torch.device) -> tuple[dict[str, float], int]:
    model.train()
    defenses.train()
    sums: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros((), device=device))
    seen = 0
    use_amp = cfg.train.amp and device.type == "cuda"
    lr = optimizer.param_groups[0]["lr"]
    batches = data.train_loader
    limit = cfg.train.max_steps_per_epoch
    bar = tqdm(batches, total=min(len(batches), limit or len(batches)), desc=f"epoch {epoch + 1}",
               disable=not cfg.train.progress, leave=False)
    for i, (images, labels) in enumerate(bar):
        if limit is not None and i >= limit:
            break
        x = data.augment(to_unit(images.to(device, non_blocking=True)))
        y = labels.to(device, non_blocking=True)
        with torch.autocast(device.type, enabled=use_amp):
            blocks = model.edge.blocks(x) if defenses.needs_blocks else None
            z_hat = blocks[-1] if blocks is not None else model.edge(x)
            z = defenses.transform(z_hat)
            logits = model.cloud(z)
            ctx = StepContext(x=x, y=y, z_hat=z_hat, z=z, logits=logits, model=model, epoch=epoch, step=step,
                              lr=lr, blocks=blocks)
            loss = defenses.task_loss(logits, y)
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
    # One host synchronisation per epoch, not per step.
    stats = {key: float(value) / max(seen, 1) for key, value in sums.items()}
    stats["train_accuracy"] = stats.pop("correct")
    stats["train_loss"] = stats.pop("loss")
    return stats, step


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


def setup_training(cfg: ExperimentConfig, device: Optional[torch.device] = None) -> TrainingSession:
    """Seed, data, model + defenses on the device, optimizer, schedule and AMP scaler for ``cfg``."""
    device = device or select_device(cfg.train.device)
    seed_everything(cfg.seed)
    data = build_data(cfg.data, cfg.seed)
    model, defenses = build_components(cfg, data.info, train_size=len(data.train))  # type: ignore[arg-type]
    model.to(device)
    defenses.to(device)
    optimizer = build_optimizer(cfg.train, model.parameters())
    scheduler = build_scheduler(cfg.train, optimizer)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.train.amp and device.type == "cuda")
    return TrainingSession(cfg, device, data, model, defenses, optimizer, scheduler, scaler)


def train(cfg: ExperimentConfig, out: Optional[str] = None, *, resume_dir: Optional[str] = None) -> TrainResult:
    """Train ``cfg`` into a run directory; with ``resume_dir``, continue that run from its last checkpoint."""
    run_dir = resume_dir or run_dir_for(cfg, out)
    ckpt_path = os.path.join(run_dir, CHECKPOINT)
    state = load_checkpoint(ckpt_path) if resume_dir else None
    if state is None and os.path.exists(ckpt_path):
        raise CheckpointError(f"{run_dir} already holds a trained run; use 'splitshield resume {run_dir}' or "
                              "choose another --out")
    session = setup_training(cfg)
    device, data, model, defenses = session.device, session.data, session.model, session.defenses
    optimizer, scheduler, scaler = session.optimizer, session.scheduler, session.scaler
    start_epoch, step = 0, 0
    if state is not None:
        model.load_state_dict(state["model"])
        defenses.load_state_dict(state["defenses"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        data.set_rng_state(state["data_rng"])
        set_rng_state(state["rng"])
        start_epoch, step = int(state["epoch"]), int(state["step"])
        log.info("resuming %s at epoch %d", run_dir, start_epoch + 1)
    else:
        os.makedirs(run_dir, exist_ok=True)
        save_config(cfg, run_dir)
        defenses.setup(model, data, device)
    log.info("run %s: %s on %s, features %s, device %s", run_dir, cfg.model.name, data.info.name,
             "x".join(map(str, model.feature_shape)), device)

    accuracy, started = float("nan"), time.perf_counter()
    for epoch in range(start_epoch, cfg.train.epochs):
        t0 = time.perf_counter()
        defenses.on_epoch_start(epoch)
        stats, step = train_epoch(model, defenses, data, optimizer, scaler, epoch, step, cfg, device)
        defenses.on_epoch_end(epoch)
        accuracy = evaluate(model, defenses, data.test_loader, device)
        record = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"], "test_accuracy": accuracy,
                  "epoch_seconds": time.perf_counter() - t0, **stats}
        scheduler.step()
        append_jsonl(os.path.join(run_dir, METRICS_FILE), record)
        log.info("epoch %d/%d  loss %.4f  train acc %.4f  test acc %.4f  (%.1fs)", epoch + 1, cfg.train.epochs,
                 stats["train_loss"], stats["train_accuracy"], accuracy, record["epoch_seconds"])
        atomic_save({
            "epoch": epoch + 1, "step": step, "train_size": len(data.train),  # type: ignore[arg-type]
            "model": model.state_dict(), "defenses": defenses.state_dict(),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
            "rng": rng_state(), "data_rng": data.rng_state(), "test_accuracy": accuracy,
        }, ckpt_path)
    if state is not None and start_epoch >= cfg.train.epochs:
        accuracy = float(state["test_accuracy"])  # resumed a finished run: nothing left to do
    seconds = time.perf_counter() - started
    write_result(run_dir, "train", {"test_accuracy": accuracy, "epochs": cfg.train.epochs, "seconds": seconds,
                                    "feature_shape": list(model.feature_shape)})
    return TrainResult(run_dir, cfg.train.epochs, accuracy, seconds)
