"""Reconstruction metrics on [0, 1] images: MSE, PSNR (per image, then averaged) and SSIM (torchmetrics).

PSNR is computed per image and then averaged over images. The CEM/ResSFL authors' code computes PSNR from the
MSE of a whole batch and averages those batch values; by Jensen's inequality (-log is convex) that is never above
the per-image mean and it changes with the batch size, so their PSNR is biased low and not comparable across batch
sizes. MSE is also the mean over images of the per-image pixel MSE (identical to the pooled MSE here because every
image has the same number of pixels).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# PSNR of a perfect reconstruction is infinite; cap it so averages stay finite (1e-10 MSE -> 100 dB).
MIN_MSE = 1e-10


def _check(preds: torch.Tensor, target: torch.Tensor) -> None:
    if preds.shape != target.shape or preds.ndim != 4:
        raise ValueError(f"expected two (N, C, H, W) batches of the same shape, got {tuple(preds.shape)} and "
                         f"{tuple(target.shape)}")


def mse_per_image(preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) x2 in [0, 1] -> (N,) mean squared error of each image."""
    _check(preds, target)
    return (preds.float() - target.float()).pow(2).flatten(1).mean(1)


def psnr_per_image(preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(N,) PSNR in dB with data range 1: 10 log10(1 / MSE_i)."""
    return -10.0 * torch.log10(mse_per_image(preds, target).clamp_min(MIN_MSE))


def ssim_per_image(preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(N,) SSIM with an 11x11 Gaussian window (sigma 1.5), data range 1, as in the papers (torchmetrics)."""
    _check(preds, target)
    # Imported here: torchmetrics pulls in scipy.signal (~2.5 s), which every CLI start would otherwise pay.
    from torchmetrics.functional.image import structural_similarity_index_measure

    return structural_similarity_index_measure(preds.float(), target.float(), gaussian_kernel=True, sigma=1.5,
                                               kernel_size=11, data_range=1.0, reduction="none")


def psnr(preds: torch.Tensor, target: torch.Tensor) -> float:
    return float(psnr_per_image(preds, target).mean())


def ssim(preds: torch.Tensor, target: torch.Tensor) -> float:
    return float(ssim_per_image(preds, target).mean())


@dataclass
class ReconstructionMeter:
    """Accumulates per-image metrics over batches; ``result()`` gives the averages over all images seen."""

    mse_sum: float = 0.0
    psnr_sum: float = 0.0
    ssim_sum: float = 0.0
    n: int = 0

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        preds, target = preds.detach().clamp(0, 1), target.detach()
        self.mse_sum += float(mse_per_image(preds, target).double().sum())
        self.psnr_sum += float(psnr_per_image(preds, target).double().sum())
        self.ssim_sum += float(ssim_per_image(preds, target).double().sum())
        self.n += len(preds)

    def result(self) -> dict[str, float]:
        if self.n == 0:
            return {"mse": math.nan, "psnr": math.nan, "ssim": math.nan, "n": 0}
        return {"mse": self.mse_sum / self.n, "psnr": self.psnr_sum / self.n, "ssim": self.ssim_sum / self.n,
                "n": self.n}


def reconstruction_metrics(preds: torch.Tensor, target: torch.Tensor, batch_size: int = 1024) -> dict[str, float]:
    """MSE, PSNR and SSIM averaged over images, computed in batches to bound memory."""
    meter = ReconstructionMeter()
    for i in range(0, len(preds), batch_size):
        meter.update(preds[i:i + batch_size], target[i:i + batch_size])
    return meter.result()
