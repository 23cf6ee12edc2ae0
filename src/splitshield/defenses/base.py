"""The defense plugin family: a small nn.Module with optional hooks, composed in a list (see stack.py).

Hooks, in the order the training loop calls them:
- ``adapt_model(model)``: change the edge/cloud architecture (PATROL, SiftFunnel); before the optimizer exists.
- ``bind(view)``: what the defense may see of the rest of the stack (a ``StackView``: the noise the others add,
  and what the whole stack transmits), given once the stack is built.
- ``setup(model, data, device)``: once, before the first epoch of a fresh run (e.g. pre-train a helper attacker).
- ``on_epoch_start(epoch)`` / ``on_epoch_end(epoch)``: per-epoch work (CEM's mixture fit).
- ``transform(z)``: what leaves the device; applied in training *and* at inference/attack time, because the
  attacker sees exactly what is transmitted.
- ``observe(ctx)``: every training step, before the losses: read the step's tensors (CEM captures its features).
- ``task_loss(logits, y)``: replace cross-entropy (first defense that returns a tensor wins).
- ``penalty(ctx)``: extra loss term, already weighted; the loop adds it to the task loss.
- ``update(ctx)``: after the model's optimizer step, train the defense's own helper modules.

Order: each defense has a ``stage`` and a stack must list them by stage (checked when it is built):
architecture (changes the model) -> transform (dropout, top-k) -> noise (additive noise, last on the wire) ->
objective (losses only: NoPeek, BiDO, ResSFL, CEM). So every transform a bound or an attacker reasons about happens
before the noise, and every loss sees the model and the feature shape it will train.

Identity: ``identity_config()`` gives the setting at strength 0 that reproduces training without the defense
exactly; every registered defense must provide one (a test enforces it). Helper optimizers and other non-tensor
state go through ``get_extra_state``/``set_extra_state`` so checkpoints carry them.
"""
from __future__ import annotations

import dataclasses
import enum
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Optional

import torch
from torch import nn

from splitshield.registry import Registry

if TYPE_CHECKING:
    from splitshield.data.loaders import DataBundle
    from splitshield.models.base import SplitModel
    from splitshield.precision import Numerics


class Stage(enum.IntEnum):
    """Where a defense sits in a stack; a stack lists its defenses by non-decreasing stage."""

    ARCHITECTURE = 0  # changes the edge/cloud (bottleneck, PATROL, SiftFunnel)
    TRANSFORM = 1  # changes z before the noise (dropout, top-k)
    NOISE = 2  # adds noise to z (Gaussian, Laplace): the last thing that happens to it on the device
    OBJECTIVE = 3  # losses and helpers only (NoPeek, BiDO, ResSFL, CEM; CEM may add its Gaussian noise here)


@dataclass(frozen=True)
class DefenseEnv:
    """What a defense may know about the run when it is built (frozen: no defense can change another's view).

    ``feature_shape`` is the transmitted shape at the defense's position in the stack: architecture defenses come
    first, so every later defense is built with the final shape."""

    num_classes: int
    input_shape: tuple[int, int, int]
    feature_shape: tuple[int, int, int]
    train_size: int
    epochs: int
    batch_size: int  # the (global) training batch
    seed: int = 0
    samples_per_epoch: Optional[int] = None  # images seen per epoch when epochs are capped; None: train_size
    precision: str = "fp32"  # the run's train.precision / memory_format (for helper networks trained in setup)
    memory_format: str = "contiguous"

    @property
    def epoch_size(self) -> int:
        return self.samples_per_epoch or self.train_size

    def replace(self, **changes: Any) -> "DefenseEnv":
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class NoiseModel:
    """Additive noise on each coordinate of z: its variance and its entropy power exp(2h) / (2 pi e) (per
    coordinate, nats). Independent sources add in both (the entropy-power inequality makes the sum of entropy
    powers a lower bound for a sum of sources, which is the safe side for CEM's bound)."""

    variance: float = 0.0
    entropy_power: float = 0.0

    @classmethod
    def gaussian(cls, std: float) -> "NoiseModel":
        return cls(std * std, std * std)

    @classmethod
    def laplace(cls, scale: float) -> "NoiseModel":
        # variance 2 b^2; entropy log(2 e b), so entropy power (2 e b)^2 / (2 pi e) = 2 e b^2 / pi
        return cls(2 * scale * scale, 2 * math.e * scale * scale / math.pi)

    def __add__(self, other: "NoiseModel") -> "NoiseModel":
        return NoiseModel(self.variance + other.variance, self.entropy_power + other.entropy_power)

    @property
    def std(self) -> float:
        return math.sqrt(self.variance)

    @property
    def gaussian_only(self) -> bool:
        return self.variance > 0 and math.isclose(self.variance, self.entropy_power, rel_tol=1e-12)

    @property
    def entropy_gap(self) -> float:
        """Nats per coordinate by which this noise's entropy falls short of a Gaussian of the same variance,
        1/2 log(variance / entropy power): 0 for Gaussian noise, 1/2 log(pi / e) ~ 0.072 for Laplace."""
        return 0.0 if self.variance <= 0 else 0.5 * math.log(self.variance / self.entropy_power)


@dataclass(frozen=True)
class StackView:
    """What a defense is handed of the rest of its stack (narrow, instead of a reference to the stack)."""

    others_noise: NoiseModel  # the noise every *other* defense of the stack adds
    transmit: Callable[[torch.Tensor], torch.Tensor]  # z_hat -> what the whole stack sends (simulated attackers)


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
    z_pre_noise: Optional[torch.Tensor] = None  # (B, *feature_shape) after the transforms, before any noise
    logs: dict[str, torch.Tensor] = field(default_factory=dict)  # detached scalars, averaged per epoch
    # The run's autocast/layout (precision.py). Hooks run in float32 on float32 tensors; a defense that runs a
    # network of its own (a simulated attacker) may enter ``numerics.autocast()`` around that network only.
    numerics: Optional["Numerics"] = None

    @property
    def features(self) -> torch.Tensor:
        """What the additive noise is added to: z after the transforms (= z_hat when there are none)."""
        return self.z_pre_noise if self.z_pre_noise is not None else self.z_hat


class Defense(nn.Module):
    """Base class; subclasses define a ``Config`` dataclass and override only the hooks they need."""

    Config: ClassVar[type]
    stage: ClassVar[Stage] = Stage.OBJECTIVE
    needs_blocks: ClassVar[bool] = False  # ask the loop for edge block outputs in StepContext.blocks
    registry_name: ClassVar[str] = ""

    def __init__(self, cfg: Any, env: DefenseEnv) -> None:
        super().__init__()
        self.cfg = cfg
        self.env = env
        self.view = StackView(NoiseModel(), lambda z: z)  # replaced by ``bind`` when the stack is built

    @classmethod
    def identity_config(cls) -> Any:
        """Hyper-parameters at strength 0 (must reproduce training without this defense bit for bit)."""
        raise NotImplementedError(f"defense {cls.registry_name!r} has no identity setting")

    def is_identity(self) -> bool:
        return False

    # --- hooks (all optional) ---
    def adapt_model(self, model: "SplitModel") -> "SplitModel":
        return model

    def bind(self, view: StackView) -> None:
        self.view = view

    def setup(self, model: "SplitModel", data: "DataBundle", device: torch.device) -> None:
        pass

    def on_epoch_start(self, epoch: int) -> None:
        pass

    def on_epoch_end(self, epoch: int) -> None:
        pass

    def transform(self, z: torch.Tensor) -> torch.Tensor:
        return z

    def observe(self, ctx: StepContext) -> None:
        pass

    def task_loss(self, logits: torch.Tensor, y: torch.Tensor) -> Optional[torch.Tensor]:
        return None

    def penalty(self, ctx: StepContext) -> Optional[torch.Tensor]:
        return None

    def update(self, ctx: StepContext) -> None:
        pass

    def noise(self) -> NoiseModel:
        """The additive noise this defense puts on z (none by default)."""
        return NoiseModel()

    def noise_std(self) -> float:
        """Std of that noise (0 if none)."""
        return self.noise().std


DEFENSES: Registry[type[Defense]] = Registry("defense")
