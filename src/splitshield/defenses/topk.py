"""Top-k pruning of the transmitted feature: zero the smallest-magnitude fraction ``ratio`` of each sample's z.

Deterministic and applied everywhere z leaves the device (training, evaluation, attacks, deployment). Per sample,
the ``floor(ratio * D)`` coordinates of smallest |z| (D = C*H*W) are set to 0; the rest pass unchanged, and the
gradient flows through the kept coordinates only.

Example::

    defenses: [{name: topk, ratio: 0.5}]
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from splitshield.defenses.base import DEFENSES, Defense, Stage
from splitshield.errors import ConfigError


@DEFENSES.register("topk")
class TopKPruning(Defense):
    stage = Stage.TRANSFORM
    @dataclass
    class Config:
        ratio: float = 0.5  # fraction of each sample's coordinates to zero

        def check(self, path: str) -> None:
            if not 0 <= self.ratio < 1:
                raise ConfigError(f"{path}.ratio: must be in [0, 1), got {self.ratio}")

    @classmethod
    def identity_config(cls) -> "TopKPruning.Config":
        return cls.Config(ratio=0.0)

    def is_identity(self) -> bool:
        return self.cfg.ratio == 0.0

    def transform(self, z: torch.Tensor) -> torch.Tensor:
        flat = z.reshape(z.shape[0], -1)  # (B, D)
        drop = math.floor(self.cfg.ratio * flat.shape[1])
        if drop == 0:
            return z
        # Keep exactly D - drop coordinates per row (ties broken by topk, so the count never drifts).
        idx = flat.detach().abs().topk(flat.shape[1] - drop, dim=1).indices
        mask = torch.zeros_like(flat).scatter_(1, idx, 1.0)
        return (flat * mask).view_as(z)
