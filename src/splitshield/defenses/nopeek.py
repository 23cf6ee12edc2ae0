"""NoPeek / DistCorr (Vepakomma et al. 2020): penalise the distance correlation between input and feature.

loss += alpha * dCor(x, z) per batch, x (B, C, H, W) and z (B, c, h, w) flattened per sample, Euclidean (not
squared) distances and double-centred distance matrices (see _dependence.py). It is computed on the transmitted
z (after any noise/dropout of earlier defenses in the list). The CEM/ResSFL authors' code multiplies its option
by 0.1 (and by 10 again on CIFAR-10); ``alpha`` here is the weight itself. Noise_Nopeek is
``[{name: gaussian_noise}, {name: nopeek}]``.

Example::

    defenses: [{name: nopeek, alpha: 0.5}]
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from splitshield.defenses._dependence import distance_correlation
from splitshield.defenses.base import DEFENSES, Defense, StepContext
from splitshield.errors import ConfigError


@DEFENSES.register("nopeek")
class NoPeek(Defense):
    @dataclass
    class Config:
        alpha: float = 0.5  # weight of dCor(x, z) in the loss

        def check(self, path: str) -> None:
            if self.alpha < 0:
                raise ConfigError(f"{path}.alpha: must be >= 0, got {self.alpha}")

    @classmethod
    def identity_config(cls) -> "NoPeek.Config":
        return cls.Config(alpha=0.0)

    def is_identity(self) -> bool:
        return self.cfg.alpha == 0.0

    def penalty(self, ctx: StepContext) -> Optional[torch.Tensor]:
        if self.cfg.alpha == 0.0:
            return None
        dcor = distance_correlation(ctx.x, ctx.z)
        ctx.logs["nopeek/dcor"] = dcor.detach()
        return self.cfg.alpha * dcor
