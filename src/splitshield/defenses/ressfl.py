"""ResSFL attacker-aware training (Li et al., CVPR 2022), a.k.a. adversarial representation learning (ARL).

A simulated attacker, ``ResidualDecoder(blocks=4, channels=64)`` from z back to x, is pre-trained on (z, x) of the
initial encoder (``pretrain_epochs``; the authors use ~30, the CPU default here is 1), then updated with its own
Adam after every model step on that step's transmitted features. The encoder is penalised through z by
``alpha * relu(SSIM(dec(z), x) - tau)`` (``measure: ssim``, the paper's threshold form; SSIM from torchmetrics,
11x11 Gaussian window) or ``-alpha * MSE(dec(z), x)`` (``measure: mse``). Noise_ARL is
``[{name: gaussian_noise}, {name: ressfl}]``: the attacker then sees the noisy z, as a deployed attacker would.

The decoder is built for the transmitted feature shape of the defense's position in the stack (an objective
defense: architecture-changing defenses come first, so it is the final shape). PATROL composes this defense for its
adversarial-reconstruction term.

Example::

    defenses: [{name: gaussian_noise, sigma: 0.025}, {name: ressfl, alpha: 0.3, tau: 0.5}]
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

from splitshield.defenses._attacker import Measure, SimulatedAttacker
from splitshield.defenses.base import DEFENSES, Defense, DefenseEnv, StepContext
from splitshield.errors import ConfigError
from splitshield.models.base import SplitModel
from splitshield.precision import resolve_numerics


@DEFENSES.register("ressfl")
class ResSFL(Defense):
    @dataclass
    class Config:
        alpha: float = 0.3  # weight of the leakage penalty on the encoder
        measure: Measure = "ssim"  # ssim: alpha * relu(SSIM - tau); mse: -alpha * MSE
        tau: float = 0.5  # SSIM threshold below which reconstructions are not penalised
        pretrain_epochs: int = 1  # attacker pre-training epochs on the initial encoder (paper ~30)
        pretrain_max_steps: Optional[int] = None  # cap per pre-training epoch (smoke tests, CPU benchmarks)
        lr: float = 1e-3  # attacker Adam learning rate
        blocks: int = 4  # residual blocks of the simulated attacker
        channels: int = 64
        taper: bool = False  # halve its channels at each upsampling stage (cheaper on a CPU; nets/decoder.py)

        def check(self, path: str) -> None:
            if self.alpha < 0:
                raise ConfigError(f"{path}.alpha: must be >= 0, got {self.alpha}")
            if self.pretrain_epochs < 0 or self.blocks < 0 or self.channels <= 0 or self.lr <= 0:
                raise ConfigError(f"{path}: pretrain_epochs and blocks must be >= 0, channels and lr positive")

    def __init__(self, cfg: Any, env: DefenseEnv, *, seed_offset: int = 101) -> None:
        super().__init__(cfg, env)
        self.attacker: Optional[SimulatedAttacker] = None
        if not self.is_identity():
            self.attacker = SimulatedAttacker(env.feature_shape, env.input_shape, blocks=cfg.blocks,
                                              channels=cfg.channels, lr=cfg.lr, seed=env.seed + seed_offset,
                                              taper=cfg.taper)
        self._seed = env.seed + seed_offset + 1

    @classmethod
    def identity_config(cls) -> "ResSFL.Config":
        return cls.Config(alpha=0.0, pretrain_epochs=0)

    def is_identity(self) -> bool:
        return self.cfg.alpha == 0.0

    def setup(self, model: SplitModel, data: Any, device: torch.device) -> None:
        if self.attacker is not None:
            numerics = resolve_numerics(self.env.precision, self.env.memory_format, device)
            self.attacker.pretrain(model.edge, self.view.transmit, data, device,
                                   epochs=self.cfg.pretrain_epochs, max_steps=self.cfg.pretrain_max_steps,
                                   seed=self._seed, numerics=numerics)

    def penalty(self, ctx: StepContext) -> Optional[torch.Tensor]:
        if self.attacker is None:
            return None
        term, score = self.attacker.leakage(ctx.z, ctx.x, self.cfg.measure, self.cfg.tau, ctx.numerics)
        ctx.logs[f"ressfl/{self.cfg.measure}"] = score
        return self.cfg.alpha * term

    def update(self, ctx: StepContext) -> None:
        if self.attacker is not None:
            ctx.logs["ressfl/attacker_mse"] = self.attacker.step(ctx.z, ctx.x, ctx.numerics)
