"""Additive noise on the transmitted feature: Gaussian and Laplace, with local-DP calibration from epsilon.

Threat model: the noise is part of what leaves the device, so it is drawn in training, evaluation, attacks and
deployment alike (the attacker trains and is scored on noisy features). Draws use the global torch RNG on the
feature's device (seeded by the run and saved in checkpoints; data loaders own their generators, so the noise
never changes the batch order). A zero scale draws nothing: the identity setting is bit-exact.

Local-DP calibration treats each coordinate of z (range [0, 1] after the bottleneck sigmoid) as one release with
sensitivity ``sensitivity`` (default 1): Laplace scale = sensitivity / epsilon (epsilon-LDP per coordinate),
Gaussian sigma = sensitivity * sqrt(2 ln(1.25 / delta)) / epsilon ((epsilon, delta) per coordinate, valid for
epsilon < 1). For a guarantee on the whole vector set ``sensitivity`` to its L1 (Laplace) or L2 (Gaussian)
range, e.g. sqrt(D) for D coordinates in [0, 1].

Example::

    defenses: [{name: gaussian_noise, sigma: 0.025}]           # the CEM paper's default
    defenses: [{name: laplace_noise, epsilon: 10.0}]           # scale 0.1
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from splitshield.defenses.base import DEFENSES, Defense, NoiseModel, Stage
from splitshield.errors import ConfigError


def _check_epsilon(epsilon: Optional[float], sensitivity: float, path: str) -> None:
    if epsilon is not None and epsilon <= 0:
        raise ConfigError(f"{path}.epsilon: must be positive (or null to give the scale directly), got {epsilon}")
    if sensitivity <= 0:
        raise ConfigError(f"{path}.sensitivity: must be positive, got {sensitivity}")


@DEFENSES.register("gaussian_noise")
class GaussianNoise(Defense):
    """z = z_hat + N(0, sigma^2 I). Shape: any; the noise has the feature's shape, dtype and device."""

    stage = Stage.NOISE

    @dataclass
    class Config:
        sigma: float = 0.025  # std of the noise (the CEM paper's default); ignored when epsilon is set
        epsilon: Optional[float] = None  # local-DP budget per coordinate; sets sigma by the Gaussian mechanism
        delta: float = 1e-4
        sensitivity: float = 1.0  # range of one released value (see the module docstring)

        def check(self, path: str) -> None:
            if self.sigma < 0:
                raise ConfigError(f"{path}.sigma: must be >= 0 (0 = no noise), got {self.sigma}")
            if not 0 < self.delta < 1:
                raise ConfigError(f"{path}.delta: must be in (0, 1), got {self.delta}")
            _check_epsilon(self.epsilon, self.sensitivity, path)

    @classmethod
    def identity_config(cls) -> "GaussianNoise.Config":
        return cls.Config(sigma=0.0)

    def effective_sigma(self) -> float:
        if self.cfg.epsilon is not None:
            return self.cfg.sensitivity * math.sqrt(2 * math.log(1.25 / self.cfg.delta)) / self.cfg.epsilon
        return self.cfg.sigma

    def is_identity(self) -> bool:
        return self.effective_sigma() == 0.0

    def transform(self, z: torch.Tensor) -> torch.Tensor:
        sigma = self.effective_sigma()
        return z if sigma == 0.0 else z + sigma * torch.randn_like(z)

    def noise(self) -> NoiseModel:
        return NoiseModel.gaussian(self.effective_sigma())


@DEFENSES.register("laplace_noise")
class LaplaceNoise(Defense):
    """z = z_hat + Laplace(0, b) per coordinate; b = scale, or sensitivity / epsilon."""

    stage = Stage.NOISE

    @dataclass
    class Config:
        scale: float = 0.025  # Laplace scale b (std b * sqrt(2)); ignored when epsilon is set
        epsilon: Optional[float] = None  # local-DP budget per coordinate: b = sensitivity / epsilon
        sensitivity: float = 1.0

        def check(self, path: str) -> None:
            if self.scale < 0:
                raise ConfigError(f"{path}.scale: must be >= 0 (0 = no noise), got {self.scale}")
            _check_epsilon(self.epsilon, self.sensitivity, path)

    @classmethod
    def identity_config(cls) -> "LaplaceNoise.Config":
        return cls.Config(scale=0.0)

    def effective_scale(self) -> float:
        return self.cfg.sensitivity / self.cfg.epsilon if self.cfg.epsilon is not None else self.cfg.scale

    def is_identity(self) -> bool:
        return self.effective_scale() == 0.0

    def transform(self, z: torch.Tensor) -> torch.Tensor:
        b = self.effective_scale()
        if b == 0.0:
            return z
        # Inverse CDF of U(-1/2, 1/2): -b sign(u) log(1 - 2|u|), drawn in float32 whatever z's dtype. rand_like
        # can return exactly 0 (u = -1/2, log 0 = -inf): about once per 2^24 draws in float32, every few hundred in
        # bfloat16, so a bf16-autocast run turned NaN within epochs. 2|u| is capped at 1 - 2^-24, which truncates
        # the tails at 16.6 b (mass e^-16.6 ~ 6e-8).
        u = torch.rand(z.shape, dtype=torch.float32, device=z.device) - 0.5
        noise = -b * u.sign() * torch.log1p(-(2 * u.abs()).clamp(max=1 - 2.0 ** -24))
        return z + noise.to(z.dtype)

    def noise(self) -> NoiseModel:
        """Variance 2 b^2 (what CEM's Sigma_p uses) and the Laplace entropy power, lower than a Gaussian's of the
        same variance: the audit's bound on I(x; z) adds the difference (NoiseModel.entropy_gap)."""
        return NoiseModel.laplace(self.effective_scale())
