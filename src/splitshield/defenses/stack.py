"""A run's defenses composed in order: ``[gaussian_noise, ressfl, cem]`` is Noise_ARL + CEM.

``DefenseStack.build`` constructs the members in order, each with a frozen ``DefenseEnv`` for its position (an
architecture defense that changes the feature shape hands the new shape to every defense after it), checks that
the members are listed by stage (defenses/base.py ``Stage``), and hands each member its ``StackView``.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from splitshield.config import ComponentSpec
from splitshield.defenses.base import DEFENSES, Defense, DefenseEnv, NoiseModel, Stage, StackView, StepContext
from splitshield.errors import ConfigError


class DefenseStack(nn.Module):
    def __init__(self, defenses: Sequence[Defense]) -> None:
        super().__init__()
        check_order(defenses)
        self.members = nn.ModuleList(defenses)
        # A member's view holds the noise of every other member that is already settled: the noise defenses (their
        # noise is their config) and the objective members bound before it (CEM's own noise depends on its view).
        for i, d in enumerate(self.members):
            others = sum((m.noise() for j, m in enumerate(self.members)
                          if j != i and (j < i or m.stage <= Stage.NOISE)), NoiseModel())
            d.bind(StackView(others, self.transform))

    @classmethod
    def build(cls, specs: Sequence[ComponentSpec], env: DefenseEnv, model: nn.Module) -> tuple["DefenseStack",
                                                                                                 nn.Module]:
        """The stack for ``specs`` and the model as its architecture defenses adapt it (in order)."""
        built = []
        for i, spec in enumerate(specs):
            cfg = DEFENSES.config_of(spec.name, spec.params, f"defenses.{i}")
            d = DEFENSES.get(spec.name)(cfg, env)
            model = d.adapt_model(model)
            if tuple(model.feature_shape) != tuple(env.feature_shape):  # type: ignore[attr-defined]
                env = env.replace(feature_shape=tuple(model.feature_shape))  # type: ignore[attr-defined]
            built.append(d)
        return cls(built), model

    def __iter__(self):  # type: ignore[override]
        return iter(self.members)

    def __len__(self) -> int:
        return len(self.members)

    def names(self) -> list[str]:
        return [d.registry_name for d in self.members]

    @property
    def needs_blocks(self) -> bool:
        return any(d.needs_blocks for d in self.members)

    def noise_model(self) -> NoiseModel:
        """The total additive noise on z (independent sources add)."""
        return sum((d.noise() for d in self.members), NoiseModel())

    def noise_std(self) -> float:
        """Std of the total additive noise on z."""
        return math.sqrt(self.noise_model().variance)

    def setup(self, model: nn.Module, data, device: torch.device) -> None:  # noqa: ANN001
        for d in self.members:
            d.setup(model, data, device)

    def on_epoch_start(self, epoch: int) -> None:
        for d in self.members:
            d.on_epoch_start(epoch)

    def on_epoch_end(self, epoch: int) -> None:
        for d in self.members:
            d.on_epoch_end(epoch)

    def transform(self, z: torch.Tensor) -> torch.Tensor:
        return self.transform_parts(z)[1]

    def transform_parts(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(z after the transforms but before any noise, the transmitted z). The stage order makes the first the
        value the noise is added to, which is what CEM's bound and the audit model."""
        pre = z
        for d in self.members:
            z = d.transform(z)
            if d.stage < Stage.NOISE:  # architecture and transform members come first (check_order)
                pre = z
        return pre, z

    def observe(self, ctx: StepContext) -> None:
        for d in self.members:
            d.observe(ctx)

    def task_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        for d in self.members:
            loss = d.task_loss(logits, y)
            if loss is not None:
                return loss
        return F.cross_entropy(logits, y)

    def penalties(self, ctx: StepContext) -> Optional[torch.Tensor]:
        total: Optional[torch.Tensor] = None
        for d in self.members:
            term = d.penalty(ctx)
            if term is not None:
                ctx.logs[f"penalty/{d.registry_name}"] = term.detach()
                total = term if total is None else total + term
        return total

    def update(self, ctx: StepContext) -> None:
        for d in self.members:
            d.update(ctx)


def check_order(defenses: Sequence[Defense]) -> None:
    """A stack lists its defenses by stage (architecture, transform, noise, objective); else a one-line error."""
    for i in range(1, len(defenses)):
        before, after = defenses[i - 1], defenses[i]
        if after.stage < before.stage:
            raise ConfigError(
                f"defenses.{i} ({after.registry_name}, a {after.stage.name.lower()} defense) must come before "
                f"defenses.{i - 1} ({before.registry_name}, {before.stage.name.lower()}): list defenses as "
                "architecture -> transform -> noise -> objective (e.g. [bottleneck, dropout, gaussian_noise, cem])")
