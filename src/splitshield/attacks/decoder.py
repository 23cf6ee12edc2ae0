"""Decoder-based inversion (ResSFL/CEM "res_normN8C64"): learn z -> x on features as they are transmitted."""
from __future__ import annotations

import copy
import logging
import os
import time
from dataclasses import asdict, dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F

from splitshield.attacks import ATTACKS
from splitshield.attacks.base import Attack, AttackConfig
from splitshield.nets.decoder import ResidualDecoder

log = logging.getLogger(__name__)


@dataclass
class DecoderConfig(AttackConfig):
    epochs: int = 50
    # The CEM paper's text says 5e-3; the authors' released script trains the attacker at 1e-3 (methods.md).
    lr: float = 1e-3
    weight_decay: float = 1e-4
    blocks: int = 8
    channels: int = 64


@ATTACKS.register("decoder")
class DecoderAttack(Attack):
    """Decoder MIA: a residual decoder trained with MSE on (transmitted feature, image) pairs (ResSFL/CEM).

    Paper: Li et al., ResSFL, CVPR 2022, https://arxiv.org/abs/2205.04007 ; Xia et al., CEM, CVPR 2025 (S.3).
    Threat model: see attacks/base.py. The decoder (``blocks`` residual blocks at ``channels`` channels, transposed
    convs up to the image size, sigmoid output) is trained with Adam, weight decay and a cosine schedule on
    ``transmit(x)`` drawn afresh every batch, so it learns to invert the noisy features the cloud really receives
    (noise-aware). The epoch with the lowest MSE on the attacker's own validation split is kept.

    Args (``DecoderConfig``): epochs=50, lr=1e-3, weight_decay=1e-4, blocks=8, channels=64, batch_size=256,
    train_size=None (all attacker images), val_fraction=0.05.
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
        feature_shape = tuple(self.transmit(self.batches(x_val[:1]).__next__()).shape[1:])
        decoder = ResidualDecoder(feature_shape, self.image_shape, blocks=cfg.blocks, channels=cfg.channels)
        decoder.to(self.device)
        steps = cfg.epochs * -(-len(x_fit) // cfg.batch_size)
        opt = torch.optim.Adam(decoder.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1))
        best, best_state, history = float("inf"), None, []
        for epoch in range(cfg.epochs):
            t0, decoder_loss, n = time.perf_counter(), 0.0, 0
            decoder.train()
            for x in self.batches(x_fit, shuffle=True, generator=g):
                loss = F.mse_loss(decoder(self.transmit(x)), x)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                decoder_loss += float(loss.detach()) * len(x)
                n += len(x)
            val = validation_mse(self, decoder, x_val)
            history.append(val)
            log.info("decoder epoch %d/%d  train mse %.5f  val mse %.5f  (%.1fs)", epoch + 1, cfg.epochs,
                     decoder_loss / max(n, 1), val, time.perf_counter() - t0)
            if val < best:
                best, best_state = val, copy.deepcopy(decoder.state_dict())
        if best_state is not None:
            decoder.load_state_dict(best_state)
        decoder.eval()
        self.decoder = decoder
        self.info.update(val_mse=best, best_epoch=history.index(best) + 1 if history else 0, val_history=history)
        if self.artifacts and self.save_artifacts:
            save_decoder(self.artifacts, decoder, cfg, self.seed)

    @torch.no_grad()
    def invert(self, z: torch.Tensor) -> torch.Tensor:
        assert self.decoder is not None, "fit() first"
        return self.decoder(z)


@torch.no_grad()
def validation_mse(attack: Attack, net: torch.nn.Module, x_val: torch.Tensor) -> float:
    """Mean per-pixel MSE of ``net`` on the attacker's validation images (eval mode, restored)."""
    was = net.training
    net.eval()
    total, n = 0.0, 0
    for x in attack.batches(x_val):
        total += float(F.mse_loss(net(attack.transmit(x)), x, reduction="sum"))
        n += x.numel()
    net.train(was)
    return total / max(n, 1)


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
    base = {k: getattr(attack.cfg, k) for k in ("train_size", "score_size", "val_fraction", "batch_size")}
    cfg = DecoderConfig(**{**base, **params})
    path = _decoder_path(attack.artifacts) if attack.artifacts else None
    if reuse and path and os.path.isfile(path):
        saved = torch.load(path, map_location="cpu", weights_only=True)
        arch_ok = all(saved["config"].get(k) == getattr(cfg, k) for k in ("blocks", "channels", "train_size"))
        if saved["seed"] == attack.seed and arch_ok:
            feature_shape = tuple(attack.transmit(next(attack.batches(x_val[:1]))).shape[1:])
            decoder = ResidualDecoder(feature_shape, attack.image_shape, blocks=cfg.blocks, channels=cfg.channels)
            decoder.load_state_dict(saved["state"])
            attack.info["decoder"] = {"source": path, "config": saved["config"]}
            return decoder.to(attack.device).eval()
    # artifacts=None: only the decoder attack itself writes the shared decoder file
    inner = DecoderAttack(cfg, attack.victim, image_shape=attack.image_shape, seed=attack.seed)
    inner.fit(x_fit, x_val)
    attack.info["decoder"] = {"source": "trained", "config": asdict(cfg), "val_mse": inner.info["val_mse"]}
    assert inner.decoder is not None
    return inner.decoder
