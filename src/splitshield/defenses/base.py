"""The defense plugin family: a small nn.Module with optional hooks, composed in a list (see stack.py).

Hooks, in the order the training loop calls them:
- ``adapt_model(model)``: change the edge/cloud architecture (PATROL, SiftFunnel); before the optimizer exists.
- ``attach(stack)``: see the other defenses of the run (CEM reads the stack's noise sigma).
- ``setup(model, data, device)``: once, before the first epoch of a fresh run (e.g. pre-train a helper attacker).
- ``on_epoch_start(epoch)`` / ``on_epoch_end(epoch)``: per-epoch work (CEM's mixture fit).
- ``transform(z)``: what leaves the device; applied in training *and* at inference/attack time, because the
  attacker sees exactly what is transmitted.
- ``task_loss(logits, y)``: replace cross-entropy (first defense that returns a tensor wins).
- ``penalty(ctx)``: extra loss term, already weighted; the loop adds it to the task loss.
- ``update(ctx)``: after the model's optimizer step, train the defense's own helper modules.

Identity: ``identity_config()`` gives the setting at strength 0 that reproduces training without the defense
exactly; every registered defense must provide one (a test enforces it). Helper optimizers and other non-tensor
state go through ``get_extra_state``/``set_extra_state`` so checkpoints carry them.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Optional

import torch
from torch import nn

from splitshield.registry import Registry

if TYPE_CHECKING:
    from splitshield.data.loaders import DataBundle
    from splitshield.defenses.stack import DefenseStack
    from splitshield.models.base import SplitModel
    from splitshield.precision import Numerics


@dataclass
class DefenseEnv:
    """What a defense may know about the run when it is built."""

    num_classes: int
    input_shape: tuple[int, int, int]
    feature_shape: tuple[int, int, int]
    train_size: int
    epochs: int
    batch_size: int
    seed: int = 0


@dataclass
class StepContext:
    """Everything about the current training step that a defense hook may use. Shapes: B = batch size."""

    x: torch.Tensor  # (B, C, H, W) input in [0, 1], after augmentation
    y: torch.Tensor  # (B,) labels
    z_hat: torch.Tensor  # (B, *feature_shape) edge output before any defense transform
    z: torch.Tensor  # (B, *feature_shape) what leaves the device
    logits: torch.Tensor  # (B, num_classes)
    model: "SplitModel"
    epoch: int
    step: int  # global optimisation step
    lr: float  # current learning rate of the model optimizer
    blocks: Optional[list[torch.Tensor]] = None  # edge block outputs, when a defense asked for them
    logs: dict[str, torch.Tensor] = field(default_factory=dict)  # detached scalars, averaged per epoch
    # The run's autocast/layout (precision.py). Hooks run in float32 on float32 tensors; a defense that runs a
    # network of its own (a simulated attacker) may enter ``numerics.autocast()`` around that network only.
    numerics: Optional["Numerics"] = None


class Defense(nn.Module):
    """Base class; subclasses define a ``Config`` dataclass and override only the hooks they need."""

    Config: ClassVar[type]
    needs_blocks: ClassVar[bool] = False  # ask the loop for edge block outputs in StepContext.blocks
    registry_name: ClassVar[str] = ""

    def __init__(self, cfg: Any, env: DefenseEnv) -> None:
        super().__init__()
        self.cfg = cfg
        self.env = env
        self._stack_ref: Optional[weakref.ref] = None  # weak: the stack owns its defenses, not the reverse

    @classmethod
    def identity_config(cls) -> Any:
        """Hyper-parameters at strength 0 (must reproduce training without this defense bit for bit)."""
        raise NotImplementedError(f"defense {cls.registry_name!r} has no identity setting")

    def is_identity(self) -> bool:
        return False

    # --- hooks (all optional) ---
    def adapt_model(self, model: "SplitModel") -> "SplitModel":
        return model

    def attach(self, stack: "DefenseStack") -> None:
        self._stack_ref = weakref.ref(stack)

    @property
    def stack(self) -> Optional["DefenseStack"]:
        """The stack this defense belongs to (set by ``attach``), for defenses that need their neighbours."""
        return self._stack_ref() if self._stack_ref is not None else None

    def transmitted(self, z_hat: torch.Tensor) -> torch.Tensor:
        """What the whole stack sends for edge output ``z_hat`` (simulated attackers train on exactly that)."""
        stack = self.stack
        return stack.transform(z_hat) if stack is not None else z_hat

    def setup(self, model: "SplitModel", data: "DataBundle", device: torch.device) -> None:
        pass

    def on_epoch_start(self, epoch: int) -> None:
        pass

    def on_epoch_end(self, epoch: int) -> None:
        pass

    def transform(self, z: torch.Tensor) -> torch.Tensor:
        return z

    def task_loss(self, logits: torch.Tensor, y: torch.Tensor) -> Optional[torch.Tensor]:
        return None

    def penalty(self, ctx: StepContext) -> Optional[torch.Tensor]:
        return None

    def update(self, ctx: StepContext) -> None:
        pass

    def noise_std(self) -> float:
        """Std of the additive Gaussian-equivalent noise this defense puts on z (0 if none)."""
        return 0.0


DEFENSES: Registry[type[Defense]] = Registry("defense")
