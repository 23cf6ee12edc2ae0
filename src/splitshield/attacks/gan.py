"""GAN-based inversion (after Zhang et al., CVPR 2020): a WGAN-GP-refined decoder attack."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from splitshield.attacks import ATTACKS
from splitshield.attacks._fitting import BestState, EarlyStopping
from splitshield.attacks.base import Attack, AttackConfig
from splitshield.attacks.decoder import DecoderStart, fitted_decoder, validation_mse

log = logging.getLogger(__name__)


@dataclass
class GANConfig(DecoderStart, AttackConfig):
    epochs: int = 150  # the maximum budget; stops earlier when the validation MSE plateaus (patience)
    patience: Optional[int] = 4
    min_delta: float = 2e-3
    min_epochs: int = 0
    critic_lr: float = 5e-3
    generator_lr: float = 5e-4
    betas: tuple[float, float] = (0.5, 0.999)
    gp_weight: float = 10.0
    mse_weight: float = 1500.0
    critic_steps: int = 1  # critic updates per generator update
    critic_channels: int = 64
    # The generator starts from a decoder attack of the same protocol and seed (DecoderStart's fields).


class Critic(nn.Module):
    """WGAN critic on images: stride-2 convs + LeakyReLU down to <= 4x4, then a linear score; no normalisation
    layer, since BatchNorm couples the samples of a batch and breaks the per-sample gradient penalty.
    (B, C, H, W) -> (B,)."""

    def __init__(self, image_shape: tuple[int, int, int], channels: int = 64) -> None:
        super().__init__()
        c, h, _ = image_shape
        layers: list[nn.Module] = []
        while h > 4:
            layers += [nn.Conv2d(c, channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True)]
            c, h, channels = channels, h // 2, min(channels * 2, 512)
        self.features = nn.Sequential(*layers)
        self.head = nn.LazyLinear(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1)).squeeze(1)


def gradient_penalty(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """WGAN-GP (Gulrajani et al. 2017): E[(||grad D(x_mix)||_2 - 1)^2] on random interpolates."""
    alpha = torch.rand(len(real), 1, 1, 1, device=real.device)
    mix = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    grad, = torch.autograd.grad(critic(mix).sum(), mix, create_graph=True)
    return (grad.flatten(1).norm(dim=1) - 1).pow(2).mean()


@ATTACKS.register("gan")
class GANAttack(Attack):
    """GAN MIA: a decoder-initialised generator refined against a WGAN-GP critic plus a weighted MSE term.

    Paper: Zhang et al., The Secret Revealer, CVPR 2020, https://arxiv.org/abs/1911.07135 ; generator and losses as
    in CEM (Xia et al., CVPR 2025, S.3). Threat model: see attacks/base.py. Generator = the decoder architecture,
    initialised from a trained decoder attack; critic loss D(G(z)) - D(x) + gp_weight * GP; generator loss
    -D(G(z)) + mse_weight * MSE(G(z), x); Adam with betas (0.5, 0.999). Features are transmitted afresh every batch
    (noise-aware). The GAN epoch with the lowest validation MSE on the attacker's own held-out images is kept.

    Args (``GANConfig``): epochs=150, critic_lr=5e-3, generator_lr=5e-4, gp_weight=10, mse_weight=1500,
    critic_steps=1, reuse_decoder=True, decoder_epochs=50, blocks=8, channels=64, batch_size=256.
    Shape: invert (B, *feature_shape) -> (B, C, H, W) in [0, 1].
    Example: ``run_attack("runs/quick", "gan", "infer", {"epochs": 2})``
    """

    Config = GANConfig

    def __init__(self, cfg: GANConfig, victim: Any, **kwargs: Any) -> None:
        super().__init__(cfg, victim, **kwargs)
        self.generator: Optional[nn.Module] = None

    def fit(self, x_fit: torch.Tensor, x_val: torch.Tensor) -> None:
        cfg = self.cfg
        gen = fitted_decoder(self, x_fit, x_val, cfg.decoder_params(), reuse=cfg.reuse_decoder)
        torch.manual_seed(self.seed + 1)  # critic initialisation, interpolation weights
        g = torch.Generator().manual_seed(self.seed + 1)
        # The critic stays in float32: the gradient penalty differentiates through it twice (create_graph).
        critic = Critic(self.image_shape, cfg.critic_channels).to(self.device)
        critic(torch.zeros(1, *self.image_shape, device=self.device))  # materialise the lazy head
        opt_d = torch.optim.Adam(critic.parameters(), lr=cfg.critic_lr, betas=cfg.betas)
        opt_g = torch.optim.Adam(gen.parameters(), lr=cfg.generator_lr, betas=cfg.betas)
        val = list(self.pairs(x_val))
        self.info["decoder_val_mse"] = validation_mse(self, gen, val)
        stopper, best = EarlyStopping(cfg.patience, cfg.min_delta, cfg.min_epochs + 1), BestState()
        stopper.update(self.info["decoder_val_mse"])  # epoch 0: the decoder the GAN starts from
        best.keep(gen)
        for epoch in self.epoch_bar(cfg.epochs):
            # Sums stay on the device (no host synchronisation per step); read once per epoch for the log.
            zero = torch.zeros((), device=self.device)
            t0, sums, step = time.perf_counter(), {"critic": zero, "adv": zero, "mse": zero}, 0
            gen.train()
            for x, z in self.pairs(x_fit, shuffle=True, generator=g):
                z = self.numerics.tensor(z)
                # Critic: Wasserstein estimate on real vs generated, plus the gradient penalty.
                with torch.no_grad(), self.numerics.autocast():
                    fake = gen(z)
                loss_d = critic(fake).mean() - critic(x).mean() + cfg.gp_weight * gradient_penalty(critic, x, fake)
                opt_d.zero_grad(set_to_none=True)
                loss_d.backward()
                opt_d.step()
                step += 1
                sums["critic"] = sums["critic"] + loss_d.detach()
                if step % cfg.critic_steps:
                    continue
                # Generator: fool the critic, stay close to the image (the MSE term dominates at weight 1500).
                with self.numerics.autocast():
                    out = gen(z)
                adv, mse = -critic(out).mean(), F.mse_loss(out, x)
                loss_g = adv + cfg.mse_weight * mse
                opt_g.zero_grad(set_to_none=True)
                loss_g.backward()
                opt_g.step()
                sums["adv"] = sums["adv"] + adv.detach()
                sums["mse"] = sums["mse"] + mse.detach()
            mse_val = validation_mse(self, gen, val)
            if stopper.update(mse_val):
                best.keep(gen)
            n_g = max(step // cfg.critic_steps, 1)
            log.info("gan epoch %d/%d  critic %.4f  adv %.4f  mse %.5f  val mse %.5f  (%.1fs)", epoch + 1,
                     cfg.epochs, float(sums["critic"]) / max(step, 1), float(sums["adv"]) / n_g,
                     float(sums["mse"]) / n_g, mse_val, time.perf_counter() - t0)
            if stopper.stop:
                break
        best.restore(gen)
        gen.eval()
        self.generator = gen
        summary = stopper.summary(cfg.epochs)
        summary.update(epochs_run=summary["epochs_run"] - 1, best_epoch=summary["best_epoch"] - 1)  # epoch 0
        self.info.update(summary)

    @torch.no_grad()
    def invert(self, z: torch.Tensor) -> torch.Tensor:
        assert self.generator is not None, "fit() first"
        with self.numerics.autocast():
            return self.generator(self.numerics.tensor(z))
