"""Reconstruction metrics: closed forms, SSIM sanity, per-image PSNR averaging, batching."""
from __future__ import annotations

import math

import pytest
import torch

from splitshield.evaluation.metrics import (ReconstructionMeter, mse_per_image, psnr, psnr_per_image,
                                            reconstruction_metrics, ssim)


def test_psnr_of_constant_error_is_closed_form() -> None:
    target = torch.full((3, 1, 16, 16), 0.5)
    for err, expected in [(0.1, 20.0), (0.01, 40.0), (0.5, 10 * math.log10(4))]:
        assert psnr(target + err, target) == pytest.approx(expected, abs=1e-4)
    assert float(mse_per_image(target + 0.1, target).mean()) == pytest.approx(0.01, rel=1e-5)


def test_ssim_identical_is_one_and_drops_with_noise() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 32, 32, generator=g)
    assert ssim(x, x) == pytest.approx(1.0, abs=1e-6)
    noisy = (x + 0.2 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    assert ssim(noisy, x) < 0.9


def test_psnr_is_averaged_per_image_not_per_batch() -> None:
    # Two images with MSE 1e-2 and 1e-4: per-image PSNRs 20 and 40 dB average to 30 dB; the batch-MSE PSNR the
    # authors' code reports would be 10 log10(1 / 0.00505) = 22.97 dB.
    target = torch.zeros(2, 1, 8, 8)
    preds = torch.stack([torch.full((1, 8, 8), 0.1), torch.full((1, 8, 8), 0.01)])
    assert psnr_per_image(preds, target).tolist() == pytest.approx([20.0, 40.0], abs=1e-4)
    assert psnr(preds, target) == pytest.approx(30.0, abs=1e-4)


def test_meter_over_batches_equals_one_shot() -> None:
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(10, 1, 16, 16, generator=g), torch.rand(10, 1, 16, 16, generator=g)
    meter = ReconstructionMeter()
    for i in range(0, 10, 3):
        meter.update(x[i:i + 3], y[i:i + 3])
    batched, whole = meter.result(), reconstruction_metrics(x, y, batch_size=100)
    assert batched["n"] == whole["n"] == 10
    for key in ("mse", "psnr", "ssim"):
        assert batched[key] == pytest.approx(whole[key], rel=1e-6)


def test_perfect_reconstruction_psnr_is_capped_finite() -> None:
    x = torch.rand(2, 1, 16, 16)
    assert psnr(x, x) == pytest.approx(100.0)


def test_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="same shape"):
        psnr(torch.zeros(2, 1, 8, 8), torch.zeros(2, 1, 8, 4))


def test_the_loss_ssim_equals_torchmetrics_in_value_and_gradient() -> None:
    from torchmetrics.functional.image import structural_similarity_index_measure as reference

    from splitshield.nets.ssim import ssim

    g = torch.Generator().manual_seed(3)
    for shape in [(6, 1, 28, 28), (3, 3, 32, 32), (2, 1, 16, 20)]:
        x = torch.rand(shape, generator=g, dtype=torch.float64)
        y = (x + 0.2 * torch.randn(shape, generator=g, dtype=torch.float64)).clamp(0, 1)
        a, b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        ours, theirs = ssim(a, y), reference(b, y, data_range=1.0)
        assert float(ours) == pytest.approx(float(theirs), abs=1e-10)
        ours.backward()
        theirs.backward()
        assert torch.allclose(a.grad, b.grad, atol=1e-12)
