"""Dependence measures: known answers and equality with slow, obviously-correct NumPy references."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from splitshield.defenses._dependence import (coco, distance_correlation, distance_correlation_sq, gaussian_kernel,
                                              hsic, linear_kernel)


def slow_dcor(a: np.ndarray, b: np.ndarray) -> float:
    """Pairwise loops straight from Szekely's definition (Euclidean distances, double centring)."""
    m = len(a)

    def centred(x: np.ndarray) -> np.ndarray:
        d = np.zeros((m, m))
        for i in range(m):
            for j in range(m):
                d[i, j] = np.sqrt(((x[i] - x[j]) ** 2).sum())
        return d - d.mean(0, keepdims=True) - d.mean(1, keepdims=True) + d.mean()

    ca, cb = centred(a.reshape(m, -1)), centred(b.reshape(m, -1))
    dcov = (ca * cb).mean()
    return float(np.sqrt(dcov / np.sqrt((ca * ca).mean() * (cb * cb).mean())))


def np_gauss(x: np.ndarray, s: float) -> np.ndarray:
    x = x.reshape(len(x), -1)
    d2 = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    return np.exp(-d2 / (2 * s * s * x.shape[1]))


def np_hsic(k: np.ndarray, l: np.ndarray) -> float:
    m = len(k)
    h = np.eye(m) - np.ones((m, m)) / m
    return float(np.trace(k @ h @ l @ h) / (m - 1) ** 2)


def np_nhsic(k: np.ndarray, l: np.ndarray, eps: float = 1e-5) -> float:
    m = len(k)
    h = np.eye(m) - np.ones((m, m)) / m
    rk = (k @ h) @ np.linalg.inv(k @ h + eps * m * np.eye(m))
    rl = (l @ h) @ np.linalg.inv(l @ h + eps * m * np.eye(m))
    return float(np.trace(rk @ rl))


def np_coco(k: np.ndarray, l: np.ndarray, ord_: object) -> float:
    m = len(k)
    h = np.eye(m) - np.ones((m, m)) / m
    return float(np.sqrt(np.linalg.norm((h @ k @ h) @ (h @ l @ h), ord=ord_)) / m)


def test_dcor_of_affine_map_is_one() -> None:
    x = torch.randn(64, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    assert distance_correlation(x, 3 * x + 2).item() == pytest.approx(1.0, abs=1e-5)
    assert distance_correlation_sq(x, -0.5 * x).item() == pytest.approx(1.0, abs=1e-5)


def test_dcor_near_zero_for_independent_samples_and_high_for_dependent() -> None:
    g = torch.Generator().manual_seed(1)
    # The sample dCor of independent data is biased upwards by ~1/sqrt(m): small, and shrinking with m.
    small = distance_correlation(torch.randn(250, 5, generator=g), torch.randn(250, 5, generator=g)).item()
    a, b = torch.randn(2000, 5, generator=g), torch.randn(2000, 5, generator=g)
    large = distance_correlation(a, b).item()
    assert large < 0.12 and large < 0.5 * small
    # Non-linear dependence (squares of two coordinates, zero linear correlation) stays far above that.
    assert distance_correlation(a, a[:, :2] ** 2).item() > 0.25


def test_dcor_equals_slow_pairwise_reference() -> None:
    g = torch.Generator().manual_seed(2)
    a = torch.randn(20, 1, 4, 4, generator=g, dtype=torch.float64)
    b = torch.tanh(a.flatten(1)[:, :6] @ torch.randn(6, 3, generator=g, dtype=torch.float64)) + \
        0.5 * torch.randn(20, 3, generator=g, dtype=torch.float64)
    assert distance_correlation(a, b).item() == pytest.approx(slow_dcor(a.numpy(), b.numpy()), rel=1e-5)


def test_dcor_gradient_is_finite_with_duplicate_rows() -> None:
    x = torch.rand(8, 4)
    z = torch.cat([x[:4], x[:4]]).clone().requires_grad_(True)  # zero distances off the diagonal too
    distance_correlation(x, z).backward()
    assert torch.isfinite(z.grad).all()


@pytest.fixture
def kernels() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    x = torch.rand(24, 1, 6, 6, generator=g, dtype=torch.float64)
    z = x[:, :, :3, :3] * 2 + 0.1 * torch.randn(24, 1, 3, 3, generator=g, dtype=torch.float64)
    y = torch.nn.functional.one_hot(torch.randint(0, 4, (24,), generator=g), 4).double()
    return x, z, y


def test_kernels_equal_numpy(kernels) -> None:
    x, _, y = kernels
    np.testing.assert_allclose(gaussian_kernel(x, 5.0).numpy(), np_gauss(x.numpy(), 5.0), rtol=1e-6, atol=1e-10)
    np.testing.assert_allclose(linear_kernel(y).numpy(), y.numpy() @ y.numpy().T)


def test_hsic_both_forms_equal_numpy_reference(kernels) -> None:
    x, z, y = kernels
    kx, kz, ly = (t.double() for t in (gaussian_kernel(x, 1.0), gaussian_kernel(z, 1.0), linear_kernel(y)))
    assert hsic(kx, kz).item() == pytest.approx(np_hsic(kx.numpy(), kz.numpy()), rel=1e-6)
    assert hsic(kz, ly).item() == pytest.approx(np_hsic(kz.numpy(), ly.numpy()), rel=1e-6)
    assert hsic(kx, kz, normalized=True).item() == pytest.approx(np_nhsic(kx.numpy(), kz.numpy()), rel=1e-5)
    assert hsic(kz, ly, normalized=True).item() == pytest.approx(np_nhsic(kz.numpy(), ly.numpy()), rel=1e-5)


def test_coco_both_forms_equal_numpy_reference(kernels) -> None:
    x, z, y = kernels
    kx, kz, ly = (t.double() for t in (gaussian_kernel(x, 1.0), gaussian_kernel(z, 1.0), linear_kernel(y)))
    assert coco(kx, kz).item() == pytest.approx(np_coco(kx.numpy(), kz.numpy(), 2), rel=1e-6)
    assert coco(kz, ly, frobenius=True).item() == pytest.approx(np_coco(kz.numpy(), ly.numpy(), "fro"), rel=1e-6)


def test_hsic_and_coco_larger_for_dependent_than_shuffled() -> None:
    # Low-dimensional samples: in high dimension with few samples all distances concentrate and every
    # dependence estimate is biased towards its dependent value.
    g = torch.Generator().manual_seed(4)
    x = torch.rand(200, 3, generator=g, dtype=torch.float64)
    z = torch.tanh(3 * x - 1.5)  # a non-linear (monotone) function of the input
    kx, kz = gaussian_kernel(x, 0.5), gaussian_kernel(z, 0.5)
    ks = gaussian_kernel(z[torch.randperm(len(z), generator=g)], 0.5)
    assert hsic(kx, kz) > 5 * hsic(kx, ks)
    assert coco(kx, kz) > 2 * coco(kx, ks)
    assert hsic(kx, kz, normalized=True) > hsic(kx, ks, normalized=True)


def test_mismatched_batches_are_rejected() -> None:
    with pytest.raises(ValueError, match="equal size"):
        distance_correlation(torch.rand(4, 2), torch.rand(5, 2))
