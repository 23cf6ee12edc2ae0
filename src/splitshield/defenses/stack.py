"""A run's defenses composed in order: ``[gaussian_noise, ressfl, cem]`` is Noise_ARL + CEM."""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from splitshield.components import component_config
from splitshield.config import ComponentSpec
from splitshield.defenses.base import DEFENSES, Defense, DefenseEnv, StepContext


class DefenseStack(nn.Module):
    def __init__(self, defenses: Sequence[Defense]) -> None:
        super().__init__()
        self.members = nn.ModuleList(defenses)
        for d in self.members:
            d.attach(self)

    @classmethod
    def from_specs(cls, specs: Sequence[ComponentSpec], env: DefenseEnv) -> "DefenseStack":
        built = []
        for i, spec in enumerate(specs):
            cfg = component_config(DEFENSES, spec, f"defenses.{i}")
            built.append(DEFENSES.get(spec.name)(cfg, env))
        return cls(built)

    def __iter__(self):  # type: ignore[override]
        return iter(self.members)

    def __len__(self) -> int:
        return len(self.members)

    def names(self) -> list[str]:
        return [d.registry_name for d in self.members]

    @property
    def needs_blocks(self) -> bool:
        return any(d.needs_blocks for d in self.members)

    def noise_std(self) -> float:
        """Std of the total additive noise on z (independent sources add in variance)."""
        return math.sqrt(sum(d.noise_std() ** 2 for d in self.members))

    def adapt_model(self, model: nn.Module) -> nn.Module:
        for d in self.members:
            model = d.adapt_model(model)
        return model

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
        for d in self.members:
            z = d.transform(z)
        return z

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
