"""How much a user's own encoder leaks: ``attack`` (a model-inversion attack on any ``nn.Module`` edge) and
``audit`` (the CEM paper's bound on I(x; z)), the same code and records as ``splitshield attack`` / ``audit``.

Threat model (attacks/base.py): white-box access to the encoder and to what it transmits. ``fit_data`` plays the
victim's training set and ``eval_data`` its test set in the paper's two protocols: ``train`` fits the attacker on
``fit_data`` and scores it on ``eval_data``; ``infer`` fits on 90% of ``eval_data`` and scores on the other 10%.
"""
from __future__ import annotations

import math
from typing import Any, Literal, Optional, Sequence, cast

import torch
from torch import nn

from splitshield.api.inputs import Data, images_and_labels, module_device
from splitshield.api.loop import LoopDefense
from splitshield.attacks import ATTACKS
from splitshield.attacks.base import Victim, victim_guard
from splitshield.data import to_unit
from splitshield.defenses import DefenseStack
from splitshield.defenses.base import NoiseModel
from splitshield.errors import UsageError
from splitshield.evaluation.attack_result import AttackResult
from splitshield.evaluation.attacking import attack_images
from splitshield.evaluation.entropy import feature_bounds
from splitshield.evaluation.figures import grid_image


class _Edge(nn.Module):
    """The user's encoder with flat (B, D) outputs seen as (B, D, 1, 1): attacks and defenses work on maps."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.encoder(x)
        if not isinstance(z, torch.Tensor) or z.ndim not in (2, 4):
            got = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise UsageError(f"encoder: expected features of shape (B, C, H, W) or (B, D), got {got}")
        return z.float()[:, :, None, None] if z.ndim == 2 else z.float()


class _Victim(nn.Module):
    """What an attack may touch (attacks/base.py ``Victim``): ``model.edge``, ``defenses``, ``device``."""

    def __init__(self, encoder: nn.Module, defense: Optional[LoopDefense]) -> None:
        super().__init__()
        self.model = nn.Module()
        self.model.edge = _Edge(encoder)
        self.defenses = defense.stack if defense is not None else DefenseStack([])
        self.device = module_device(encoder)


def attack(encoder: nn.Module, fit_data: Optional[Data], eval_data: Data, attack: str = "decoder", *,
           protocol: Literal["train", "infer"] = "train", defense: Optional[LoopDefense] = None,
           params: Optional[dict[str, Any]] = None, seed: int = 0, num_classes: Optional[int] = None,
           victim_accuracy: Optional[float] = None, progress: bool = True) -> AttackResult:
    """Attack ``encoder`` (images in [0, 1] -> features) the way a worst-case adversary would, and score it.

    Args:
        encoder: the edge module; its device is the attack's. It runs in eval mode; its parameters, buffers,
            gradients and modes are left exactly as they were (checked).
        fit_data: the attacker's images for the ``train`` protocol (the victim's training distribution); may be
            None under ``infer``. Any of: (N, C, H, W) tensor, (images, labels), Dataset, DataLoader.
        eval_data: the images to reconstruct (the victim's test set).
        attack: ``decoder`` (default), ``gan``, ``rmle`` or ``knn`` (``splitshield.list_attacks()``).
        defense: the ``LoopDefense`` the encoder was trained with: its transform (noise, dropout) is applied to
            the features, as the device sends them.
        params: the attack's hyper-parameters (its ``Config``), e.g. ``{"epochs": 20}``.
        num_classes, victim_accuracy: the victim's, when known: a victim at chance accuracy does not count.
        progress: a progress bar over the attacker's epochs.
    Returns: an ``AttackResult`` (MSE, PSNR, SSIM, the mean-image baseline, converged, counts, best epoch) with
        the reconstructions of the scored images.
    """
    test, _ = images_and_labels(eval_data, "eval_data")
    if protocol == "train":
        if fit_data is None:
            raise UsageError("attack: the train protocol fits the attacker on fit_data; pass it (or use "
                             "protocol='infer', which fits on 90% of eval_data)")
        train, _ = images_and_labels(fit_data, "fit_data")
        if train.shape[1:] != test.shape[1:]:
            raise UsageError(f"attack: fit_data images are {tuple(train.shape[1:])} but eval_data images are "
                             f"{tuple(test.shape[1:])}")
    else:
        train = test[:0]
    cfg = ATTACKS.config_of(attack, params or {}, "attack")
    victim = _Victim(encoder, defense)
    # _Victim has Victim's three attributes (model, defenses, device); Victim is a plain class, not a Protocol.
    record, recon, _, x_score = attack_images(cast(Victim, victim), attack, protocol, cfg, train, test,
                                              num_classes=int(num_classes or 0), seed=seed,
                                              victim_acc=victim_accuracy, progress=progress)
    return AttackResult.from_record(record, reconstructions=recon, originals=x_score)


def audit(encoder: nn.Module, data: Data, *, defense: Optional[LoopDefense] = None,
          noise_std: Optional[float] = None, num_classes: Optional[int] = None, components_per_class: int = 3,
          covariance: Literal["full", "diagonal", "isotropic"] = "diagonal", h_x: Optional[float] = None,
          max_samples: Optional[int] = None, seed: int = 0, batch_size: int = 512) -> dict[str, Any]:
    """The upper bound on I(x; z) for ``encoder``'s features on ``data`` (labelled images), per class too, and
    Theorem 1's MSE figure with its H(x) reference named (docs/cem.md, "The audit"; evaluation/entropy.py).

    The noise the bound is for: ``defense``'s (the features it adds noise to are the ones fitted), or Gaussian
    noise of std ``noise_std`` that the encoder's deployment adds itself. Without either the record is
    ``degenerate`` (nothing bounds I(x; z) without noise)."""
    images, labels = images_and_labels(data, "data")
    if labels is None:
        raise UsageError("audit: data needs labels ((images, labels) pairs): the bound is fitted per class")
    if max_samples is not None:
        images, labels = images[:max_samples], labels[:max_samples]
    if defense is not None and noise_std is not None:
        raise UsageError("audit: give defense= (its noise) or noise_std= (noise your deployment adds), not both")
    noise = defense.noise() if defense is not None else NoiseModel.gaussian(noise_std or 0.0)
    victim = _Victim(encoder, defense)
    feats = []
    with victim_guard(victim), torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(seed)  # random transforms (dropout) drawn reproducibly, the caller's RNG left alone
        for i in range(0, len(images), batch_size):
            z_hat = cast(nn.Module, victim.model.edge)(to_unit(images[i:i + batch_size].to(victim.device)))
            feats.append(victim.defenses.transform_parts(z_hat)[0].flatten(1).float())
    classes = int(num_classes or int(labels.max()) + 1)
    return feature_bounds(torch.cat(feats), labels.to(victim.device), classes, noise,
                          int(math.prod(images.shape[1:])), components_per_class=components_per_class,
                          covariance=covariance, h_x=h_x, seed=seed)


def save_reconstructions(results: Sequence[AttackResult], path: str, *, images: int = 8, scale: int = 3) -> str:
    """A PNG: the first ``images`` scored originals, then each result's reconstructions of them, one row each."""
    if not results or any(r.reconstructions is None or r.originals is None for r in results):
        raise UsageError("save_reconstructions: pass AttackResults returned by splitshield.attack (they carry "
                         "their reconstructions)")
    first = results[0].originals
    rows = [("original", first[:images])]  # type: ignore[index]
    rows += [(r.attack, r.reconstructions[:images].mul(255).round().to(torch.uint8))  # type: ignore[index]
             for r in results]
    grid_image(rows, scale=scale).save(path)
    return path
