"""Training a learned attacker to convergence: early stopping on the attacker's own validation split, learning-rate
schedules, and the record of how the fit went.

Why: a privacy number is an attack's MSE, so the attacker must be as strong as its budget allows. A fixed, small
epoch count measures how far a weak attacker got, not what the features leak. Here ``epochs`` is a maximum; the fit
stops once the validation MSE has not improved by a relative ``min_delta`` for ``patience`` epochs, keeps the best
epoch, and records whether it stopped on such a plateau (``converged``) or ran out of budget.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

import torch

Schedule = Literal["plateau", "cosine", "constant"]
SCHEDULES: tuple[str, ...] = ("plateau", "cosine", "constant")


@dataclass
class EarlyStopping:
    """Tracks the validation MSE per epoch; ``update`` says whether the epoch is the new best."""

    patience: Optional[int]  # None: never stop early (run the whole budget)
    min_delta: float = 1e-3  # relative improvement that counts as progress
    min_epochs: int = 0  # never stop before this many epochs (the first epochs of a fast schedule are noisy)
    best: float = math.inf
    best_epoch: int = 0  # 1-based; 0 before any epoch
    history: list[float] = field(default_factory=list)
    _stale: int = 0

    def update(self, value: float) -> bool:
        self.history.append(value)
        improved = value < self.best * (1.0 - self.min_delta)
        if value < self.best:  # the kept epoch is the lowest one, progress or not
            self.best, self.best_epoch = value, len(self.history)
        self._stale = 0 if improved else self._stale + 1
        return self.best_epoch == len(self.history)

    @property
    def stop(self) -> bool:
        return (self.patience is not None and self._stale >= self.patience
                and len(self.history) >= self.min_epochs)

    def summary(self, max_epochs: int) -> dict[str, Any]:
        """For the result record: epochs run, the kept epoch, and whether the fit converged within its budget
        (None without early stopping: a fixed budget says nothing about convergence)."""
        converged = None if self.patience is None else self.stop
        return {"val_mse": self.best, "best_epoch": self.best_epoch, "epochs_run": len(self.history),
                "max_epochs": max_epochs, "converged": converged, "val_history": list(self.history)}


class LRSchedule:
    """The learning-rate schedule of a fitted attacker: ``plateau`` halves the rate after ``lr_patience`` epochs
    without progress (pairs with early stopping), ``cosine`` anneals per step over the whole budget (the papers'
    setting), ``constant`` keeps it."""

    def __init__(self, kind: str, optimizer: torch.optim.Optimizer, *, total_steps: int, lr_patience: int = 2,
                 factor: float = 0.5, min_delta: float = 1e-3) -> None:
        if kind not in SCHEDULES:
            raise ValueError(f"unknown schedule {kind!r}; valid: {', '.join(SCHEDULES)}")
        self.kind = kind
        self.step_sched = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total_steps, 1))
                           if kind == "cosine" else None)
        self.epoch_sched = (torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=factor, patience=lr_patience, threshold=min_delta, threshold_mode="rel")
            if kind == "plateau" else None)

    def after_step(self) -> None:
        if self.step_sched is not None:
            self.step_sched.step()

    def after_epoch(self, val: float) -> None:
        if self.epoch_sched is not None:
            self.epoch_sched.step(val)


class BestState:
    """A copy of the network's weights at its best validation epoch."""

    def __init__(self) -> None:
        self.state: Optional[dict[str, torch.Tensor]] = None

    def keep(self, net: torch.nn.Module) -> None:
        self.state = copy.deepcopy(net.state_dict())

    def restore(self, net: torch.nn.Module) -> None:
        if self.state is not None:
            net.load_state_dict(self.state)
