"""Decoder-based inversion (ResSFL/CEM "res_normN8C64"): learn z -> x on features as they are transmitted."""
from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass
from typing import Any, Literal, Optional

import torch
import torch.nn.functional as F

from splitshield.attacks import ATTACKS
from splitshield.attacks._fitting import BestState, EarlyStopping, LRSchedule
from splitshield.attacks.base import Attack, AttackConfig
from splitshield.errors import ConfigError
from splitshield.nets.decoder import ResidualDecoder

log = logging.getLogger(__name__)


@dataclass
class DecoderConfig(AttackConfig):
    epochs: int = 50  # the maximum budget; the fit stops earlier on a validation plateau (patience)
    # The CEM paper's text says 5e-3; the authors' released script trains the attacker at 1e-3 (methods.md).
    lr: float = 1e-3
    weight_decay: float = 1e-4
    blocks: int = 8
    channels: int = 64
    stem: Literal["conv", "dense"] = "conv"  # conv: the papers' decoder; dense: a linear stem (nets/decoder.py)
    taper: bool = False  # halve the channels at each upsampling stage (nets/decoder.py)
    schedule: Literal["plateau", "cosine", "constant"] = "plateau"  # cosine: per step over the whole budget
    patience: Optional[int] = 4  # epochs without a relative val-MSE improvement of min_delta; None: full budget
    min_delta: float = 2e-3
    min_epochs: int = 10  # no early stop before this (early epochs at a high lr are noisy, not converged)
    lr_patience: int = 1  # plateau schedule: halve the rate after this many epochs without progress

    def check(self, path: str) -> None:
        if self.epochs < 1:
            raise ConfigError(f"{path}.epochs: must be >= 1, got {self.epochs}")
        if self.patience is not None and self.patience < 1:
            raise ConfigError(f"{path}.patience: must be >= 1 or null (no early stopping), got {self.patience}")
        if self.min_delta < 0 or self.lr <= 0:
            raise ConfigError(f"{path}: min_delta must be >= 0 and lr positive")


@dataclass
class DecoderStart:
    """Attacks that start from a fitted decoder (GAN, rMLE init=decoder): which one, and how to train it when no
    decoder attack of the same protocol and seed was saved (``splitshield attack ... --attack decoder`` first)."""

    reuse_decoder: bool = True
    decoder_epochs: int = 50
    decoder_lr: float = 1e-3
    blocks: int = 8
    channels: int = 64
    stem: Literal["conv", "dense"] = "conv"
    taper: bool = False  # halve the channels at each upsampling stage (nets/decoder.py)

    def decoder_params(self) -> dict[str, Any]:
        return {"epochs": self.decoder_epochs, "lr": self.decoder_lr, "blocks": self.blocks,
                "channels": self.channels, "stem": self.stem, "taper": self.taper}


@ATTACKS.register("decoder")
class DecoderAttack(Attack):
    """Decoder MIA: a residual decoder trained with MSE on (transmitted feature, image) pairs (ResSFL/CEM).

    Paper: Li et al., ResSFL, CVPR 2022, https://arxiv.org/abs/2205.04007 ; Xia et al., CEM, CVPR 2025 (S.3).
    Threat model: see attacks/base.py. The decoder (``blocks`` residual blocks at ``channels`` channels after a conv
    or dense ``stem``, transposed convs up to the image size, sigmoid output) is trained with Adam and weight decay
    on ``transmit(x)`` drawn afresh every batch, so it learns to invert the noisy features the cloud really receives
    (noise-aware). It trains until the MSE on the attacker's own validation split stops improving (``patience``
    epochs without a relative gain of ``min_delta``) or ``epochs`` run out, and keeps the best epoch; the record says
    which (``info.converged``).

    Args (``DecoderConfig``): epochs=50 (maximum), lr=1e-3, weight_decay=1e-4, blocks=8, channels=64, stem="conv",
    schedule="plateau", patience=4, min_delta=2e-3, min_epochs=10, batch_size=256, train_size=None (all attacker
    images), val_fraction=0.05.
    Shape: invert (B, *feature_shape) -> (B, C, H, W) in [0, 1].
    Example: ``run_attack("runs/quick", "decoder", "train", {"epochs": 2})``
    """

    Config = DecoderConfig

    def __init__(self, cfg: DecoderConfig, victim: Any, **kwargs: Any) -> None:
        super().__init__(cfg, victim, **kwargs)
        self.decoder: Optional[ResidualDecoder] = None

    def fit(self, x_fit: torch.Tensor, x_val: torch.Tensor) -> None:
        cfg = self.cfg
        g = torch.Generator().manual_seed(self.seed)
        torch.manual_seed(self.seed)  # decoder initialisation
        feature_shape = tuple(self.edge_features(x_val[:1]).shape[1:])
        decoder = ResidualDecoder(feature_shape, self.image_shape, blocks=cfg.blocks, channels=cfg.channels,
                                  stem=cfg.stem, taper=cfg.taper)
        self.numerics.module(decoder.to(self.device))
        val = list(self.pairs(x_val))  # one fixed noise draw: epochs are compared on the same validation features
        opt = torch.optim.Adam(decoder.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        sched = LRSchedule(cfg.schedule, opt, total_steps=cfg.epochs * -(-len(x_fit) // cfg.batch_size),
                           lr_patience=cfg.lr_patience, min_delta=cfg.min_delta)
        stopper, best = EarlyStopping(cfg.patience, cfg.min_delta, cfg.min_epochs), BestState()
        for epoch in self.epoch_bar(cfg.epochs):
            t0 = time.perf_counter()
            decoder.train()
            losses = []
            for x, z in self.pairs(x_fit, shuffle=True, generator=g):
                with self.numerics.autocast():
                    out = decoder(self.numerics.tensor(z))
                loss = F.mse_loss(out, x)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.after_step()
                losses.append(loss.detach() * len(x))
            mse = validation_mse(self, decoder, val)
            if stopper.update(mse):
                best.keep(decoder)
            sched.after_epoch(mse)
            log.info("decoder epoch %d/%d  train mse %.5f  val mse %.5f  lr %.2g  (%.1fs)", epoch + 1, cfg.epochs,
                     float(torch.stack(losses).sum()) / max(len(x_fit), 1), mse, opt.param_groups[0]["lr"],
                     time.perf_counter() - t0)
            if stopper.stop:
                break
        best.restore(decoder)
        decoder.eval()
        self.decoder = decoder
        self.info.update(stopper.summary(cfg.epochs))
        if self.artifacts and self.save_artifacts:
            save_decoder(self.artifacts, decoder, cfg, self.seed)

    @torch.no_grad()
    def invert(self, z: torch.Tensor) -> torch.Tensor:
        assert self.decoder is not None, "fit() first"
        with self.numerics.autocast():
            return self.decoder(self.numerics.tensor(z))


@torch.no_grad()
def validation_mse(attack: Attack, net: torch.nn.Module, val: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Mean per-pixel MSE of ``net`` on the attacker's validation pairs (x, transmitted z) (eval mode, restored)."""
    was = net.training
    net.eval()
    total, n = torch.zeros((), dtype=torch.float64, device=attack.device), 0
    for x, z in val:
        with attack.numerics.autocast():
            out = net(attack.numerics.tensor(z))
        total += F.mse_loss(out.float(), x, reduction="sum").double()
        n += x.numel()
    net.train(was)
    return float(total) / max(n, 1)


def _decoder_path(prefix: str) -> str:
    return f"{prefix}decoder.pt"


def save_decoder(prefix: str, decoder: ResidualDecoder, cfg: DecoderConfig, seed: int) -> None:
    """Keep a fitted decoder next to the results so that gan / rmle(init=decoder) of the same protocol and seed
    can start from it instead of training another."""
    path = _decoder_path(prefix)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    torch.save({"state": decoder.state_dict(), "config": asdict(cfg), "seed": seed}, path + ".tmp")
    os.replace(path + ".tmp", path)


def fitted_decoder(attack: Attack, x_fit: torch.Tensor, x_val: torch.Tensor, params: dict[str, Any],
                   reuse: bool) -> ResidualDecoder:
    """A decoder attack fitted on the same attacker data: loaded from the artifacts of a ``decoder`` run with the
    same protocol, seed and architecture when ``reuse`` and available, else trained here with ``params``."""
    base = {k: getattr(attack.cfg, k) for k in ("train_size", "score_size", "val_fraction", "batch_size",
                                                 "precision", "memory_format")}
    cfg = DecoderConfig(**{**base, **params})
    path = _decoder_path(attack.artifacts) if attack.artifacts else None
    if reuse and path and os.path.isfile(path):
        saved = torch.load(path, map_location="cpu", weights_only=True)
        defaults = {"stem": "conv", "taper": False}  # decoders saved before these options existed
        arch_ok = all(saved["config"].get(k, defaults.get(k)) == getattr(cfg, k)
                      for k in ("blocks", "channels", "stem", "taper", "train_size"))
        if saved["seed"] == attack.seed and arch_ok:
            feature_shape = tuple(attack.edge_features(x_val[:1]).shape[1:])
            decoder = ResidualDecoder(feature_shape, attack.image_shape, blocks=cfg.blocks, channels=cfg.channels,
                                      stem=cfg.stem, taper=cfg.taper)
            decoder.load_state_dict(saved["state"])
            attack.info["decoder"] = {"source": path, "config": saved["config"]}
            return attack.numerics.module(decoder.to(attack.device).eval())
    # artifacts=None: only the decoder attack itself writes the shared decoder file
    inner = DecoderAttack(cfg, attack.victim, image_shape=attack.image_shape, seed=attack.seed)
    inner._edge_cache = attack._edge_cache  # the same images: encode them once
    inner.fit(x_fit, x_val)
    attack.info["decoder"] = {"source": "trained", "config": asdict(cfg), "val_mse": inner.info["val_mse"]}
    assert inner.decoder is not None
    return inner.decoder
