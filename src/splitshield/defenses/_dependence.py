"""Dependence measures between two batches of samples: distance correlation, HSIC and COCO.

All take batches with the same number m of samples; each sample is flattened to a row. They are differentiable
(defenses minimise or maximise them) and vectorised: one (m, m) distance or kernel matrix per input.

- ``distance_correlation``: Szekely's dCor with Euclidean (not squared) distances and double centring, the
  NoPeek/ResSFL definition; ``distance_correlation_sq`` is dCor^2 (SiftFunnel's term).
- ``hsic`` / ``coco``: BiDO's two criteria on kernel matrices, in the paper's form and in the authors'
  released-code form (``normalized=True`` for HSIC, ``frobenius=True`` for COCO); see docs/defenses.md.
"""
from __future__ import annotations

import torch

_EPS = 1e-12


def _rows(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1).float()


def _check(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape[0] != b.shape[0] or a.shape[0] < 2:
        raise ValueError(f"dependence measures need two batches of equal size >= 2, got {a.shape[0]} and "
                         f"{b.shape[0]}")


def _double_centre(d: torch.Tensor) -> torch.Tensor:
    # A_ij = d_ij - row mean_i - column mean_j + grand mean, for an (m, m) distance matrix.
    return d - d.mean(0, keepdim=True) - d.mean(1, keepdim=True) + d.mean()


def _centred_distances(t: torch.Tensor) -> torch.Tensor:
    rows = _rows(t)
    # The exact (not matmul) path: its backward is 0 at the zero diagonal instead of a huge 1/sqrt(rounding error).
    d = torch.cdist(rows, rows, compute_mode="donot_use_mm_for_euclid_dist")  # (m, m) Euclidean distances
    return _double_centre(d)


def distance_correlation_sq(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Sample dCor^2(a, b) in [0, 1]: 1 when b is an affine similarity map of a, near 0 for independent samples."""
    _check(a, b)
    ca, cb = _centred_distances(a), _centred_distances(b)
    dcov_ab = (ca * cb).mean()  # dCov^2
    dvar = (ca * ca).mean() * (cb * cb).mean()  # dVar^2(a) dVar^2(b)
    return dcov_ab.clamp_min(0) / dvar.clamp_min(_EPS).sqrt()


def distance_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Sample dCor(a, b) = sqrt(dCor^2); the eps keeps the gradient finite when the samples are independent."""
    return (distance_correlation_sq(a, b) + _EPS).sqrt()


def gaussian_kernel(t: torch.Tensor, sigma: float) -> torch.Tensor:
    """K_ij = exp(-||t_i - t_j||^2 / (2 sigma^2 D)), D = dim of one sample (BiDO's width scaling)."""
    rows = _rows(t)
    sq = rows.pow(2).sum(1)
    dist2 = (sq[:, None] + sq[None, :] - 2 * rows @ rows.T).clamp_min(0)  # (m, m)
    return torch.exp(-dist2 / (2 * sigma ** 2 * rows.shape[1]))


def linear_kernel(t: torch.Tensor) -> torch.Tensor:
    rows = _rows(t)
    return rows @ rows.T


def _centring(m: int, like: torch.Tensor) -> torch.Tensor:
    return torch.eye(m, dtype=like.dtype, device=like.device) - 1.0 / m  # H = I - 11^T / m


def hsic(k: torch.Tensor, l: torch.Tensor, *, normalized: bool = False, eps: float = 1e-5) -> torch.Tensor:
    """HSIC of two (m, m) kernel matrices.

    Paper form: (m-1)^-2 tr(K H L H). Authors' code (``normalized``): tr(R_K R_L) with
    R_K = (K H)(K H + eps m I)^-1, a normalised cross-covariance operator bounded by m.
    """
    m = k.shape[0]
    h = _centring(m, k)
    if not normalized:
        return torch.trace(k @ h @ l @ h) / (m - 1) ** 2
    reg = eps * m * torch.eye(m, dtype=k.dtype, device=k.device)
    # (KH)(KH + eps m I)^-1 equals (KH + eps m I)^-1 (KH): both are functions of the same matrix KH.
    rk = torch.linalg.solve(k @ h + reg, k @ h)
    rl = torch.linalg.solve(l @ h + reg, l @ h)
    return (rk * rl.T).sum()


def coco(k: torch.Tensor, l: torch.Tensor, *, frobenius: bool = False) -> torch.Tensor:
    """Constrained covariance (1/m) ||HKH HLH||^(1/2): spectral norm (paper) or Frobenius norm (authors' code)."""
    m = k.shape[0]
    h = _centring(m, k)
    prod = (h @ k @ h) @ (h @ l @ h)
    norm = torch.linalg.matrix_norm(prod, ord="fro" if frobenius else 2)
    return (norm + _EPS).sqrt() / m
