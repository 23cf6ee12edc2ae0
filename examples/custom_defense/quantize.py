"""Example (c): a new defense in one file. It rounds each transmitted feature to one of ``levels`` values in [0, 1]
(coarser features leak less; 0 levels is the identity). Use it from any config or grid once this file is loaded:

    splitshield --plugin examples/custom_defense/quantize.py table examples/custom_defense/table.yaml

or from Python: ``splitshield.load_plugins(["examples/custom_defense/quantize.py"])``, then
``splitshield.defense("quantize", levels=4, ...)``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

import splitshield


@splitshield.register_defense("quantize")
class Quantize(splitshield.Defense):
    """Round z to ``levels`` evenly spaced values in [0, 1], with a straight-through gradient (the encoder still
    trains through it). A transform: it runs on the device, before any noise."""

    stage = splitshield.Stage.TRANSFORM

    @dataclass
    class Config:
        levels: int = 4  # values per feature; 0: off (identity)

        def check(self, path: str) -> None:
            if self.levels == 1 or self.levels < 0:
                raise splitshield.ConfigError(f"{path}.levels: must be 0 (off) or >= 2, got {self.levels}")

    @classmethod
    def identity_config(cls) -> "Quantize.Config":
        return cls.Config(levels=0)

    def is_identity(self) -> bool:
        return self.cfg.levels == 0

    def transform(self, z: torch.Tensor) -> torch.Tensor:
        if self.cfg.levels == 0:
            return z
        steps = self.cfg.levels - 1
        rounded = torch.round(z.clamp(0, 1) * steps) / steps
        return z + (rounded - z).detach()  # forward: rounded; backward: identity
