"""Dropout on the transmitted feature (Dropout baseline of the CEM paper, after He et al. 2020).

An explicit Bernoulli mask, not ``nn.Dropout``: the mask is part of what leaves the device, so it is drawn in
training *and* at evaluation, attack and deployment time (``nn.Dropout`` would switch off in eval mode and the
attacker would be scored on features the deployed device never sends). Accuracy is therefore measured with
dropout on, as deployed. ``rescale`` multiplies kept values by 1/(1-p) (inverted dropout); the CEM/ResSFL
authors' code does not rescale (``rescale: false``), which also keeps z in [0, 1].

Random numbers: the global torch RNG on the feature's device; p = 0 draws nothing (bit-exact identity).

Example::

    defenses: [{name: dropout, p: 0.5}]
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from splitshield.defenses.base import DEFENSES, Defense, Stage
from splitshield.errors import ConfigError


@DEFENSES.register("dropout")
class FeatureDropout(Defense):
    stage = Stage.TRANSFORM
    @dataclass
    class Config:
        p: float = 0.5  # probability that one coordinate of z is zeroed
        rescale: bool = False  # multiply kept coordinates by 1/(1-p) (the authors' code does not)

        def check(self, path: str) -> None:
            if not 0 <= self.p < 1:
                raise ConfigError(f"{path}.p: must be in [0, 1), got {self.p}")

    @classmethod
    def identity_config(cls) -> "FeatureDropout.Config":
        return cls.Config(p=0.0)

    def is_identity(self) -> bool:
        return self.cfg.p == 0.0

    def transform(self, z: torch.Tensor) -> torch.Tensor:
        if self.cfg.p == 0.0:
            return z
        keep = (torch.rand_like(z) >= self.cfg.p).to(z.dtype)  # (B, C, H, W) mask, 1 = transmitted
        if self.cfg.rescale:
            keep = keep / (1.0 - self.cfg.p)
        return z * keep
