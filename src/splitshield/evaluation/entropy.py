"""Entropy audit of a trained run: the CEM paper's bounds (Theorem 1 and Eq. 3) on the run's features.

Eq. 3: H(x|z) >= H(x) - L_C, with L_C (Eq. 7) computed from a k-per-class Gaussian mixture fitted to the
encoder outputs z_hat of the training set and Sigma_p = sigma^2 I, sigma the run's transmitted noise std.
Theorem 1: any attacker's per-dimension MSE xi >= exp(2 H(x|z) / d) / (2 pi e), d = input dimension.

H(x) reference (``h_ref``, default 0 nats): the differential entropy of the uniform density on [0, 1]^d, the
largest entropy any image distribution in [0, 1]^d can have. True image distributions have H(x) < 0, so the
reported numbers are *relative* (the paper's "relative conditional entropy"): they rank runs of the same data,
they are not absolute guarantees. Per class, the same quantities use the class's own components with weights
conditioned on the class (L_C of the class-conditional mixture).

Without noise (sigma = 0) L_C is infinite: H(x|z) may be -inf and the bound is the vacuous xi >= 0; the audit
reports that case as ``degenerate`` with ``null`` entropies and a zero bound rather than NaN.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Literal, Optional

import torch
from torch.utils.data import DataLoader

from splitshield.data import to_unit
from splitshield.defenses import _mixture as mx
from splitshield.train.build import LoadedRun

log = logging.getLogger(__name__)

TWO_PI_E = 2 * math.pi * math.e


def mse_lower_bound(h_cond: float, d: int) -> float:
    """Theorem 1: xi >= exp(2 H(x|z) / d) / (2 pi e)."""
    return math.exp(2.0 * h_cond / d) / TWO_PI_E


def mixture_bounds(weights: torch.Tensor, half_log_det: torch.Tensor, d: int, h_ref: float = 0.0
                   ) -> dict[str, Any]:
    """Overall and per-class L_C, relative H(x|z) and MSE bound. weights (C, K) sum to 1; half_log_det (C, K)."""
    overall = float(mx.entropy_loss(weights.flatten(), half_log_det.flatten()))
    per_class = []
    class_mass = weights.sum(1)
    for c in range(weights.shape[0]):  # C scalars for a report, after the batched math
        mass = float(class_mass[c])
        if mass <= 0:
            per_class.append({"class": c, "weight": 0.0, "l_c": None, "h_cond": None, "mse_bound": None})
            continue
        lc = float(mx.entropy_loss(weights[c] / mass, half_log_det[c]))
        per_class.append({"class": c, "weight": mass, "l_c": lc, "h_cond": h_ref - lc,
                          "mse_bound": mse_lower_bound(h_ref - lc, d)})
    return {"l_c": overall, "h_cond": h_ref - overall, "h_cond_per_dim": (h_ref - overall) / d,
            "mse_bound": mse_lower_bound(h_ref - overall, d), "per_class": per_class}


@torch.no_grad()
def training_features(run: LoadedRun, dataset: Any, batch_size: int = 512, max_samples: Optional[int] = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Encoder outputs z_hat (N, D) and labels (N,) of the training set, one no-grad pass in eval mode."""
    feats, labels, seen = [], [], 0
    for images, y in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        if max_samples is not None and seen >= max_samples:
            break
        feats.append(run.model.edge(to_unit(images.to(run.device))).flatten(1).float())
        labels.append(y.to(run.device))
        seen += len(y)
    z, y = torch.cat(feats), torch.cat(labels)
    return (z[:max_samples], y[:max_samples]) if max_samples is not None else (z, y)


def audit(run: LoadedRun, dataset: Any, *, components_per_class: int = 3,
          covariance: Literal["full", "diagonal", "isotropic"] = "diagonal", kmeans_iters: int = 30,
          h_ref: float = 0.0, max_samples: Optional[int] = None, seed: int = 0) -> dict[str, Any]:
    """The relative conditional entropy bound (Eq. 3) and Theorem 1's MSE bound for a trained run."""
    z, y = training_features(run, dataset, max_samples=max_samples)
    num_classes = int(run.info.num_classes)
    gen = torch.Generator(device=z.device).manual_seed(seed)
    fit = mx.fit_mixture(z, y, num_classes, components_per_class, covariance, kmeans_iters, generator=gen)
    sigma = float(run.defenses.noise_std())
    d = int(math.prod(run.info.input_shape))
    record: dict[str, Any] = {
        "noise_std": sigma, "input_dim": d, "feature_dim": int(z.shape[1]), "samples": int(z.shape[0]),
        "components_per_class": components_per_class, "covariance": covariance, "h_ref": h_ref,
        "h_ref_meaning": "differential entropy of the uniform density on [0,1]^d (0 nats): bounds are relative",
        "epoch": run.epoch,
    }
    if sigma <= 0:
        log.warning("%s transmits z without Gaussian noise: L_C is infinite and the MSE bound is vacuous (0)",
                    run.run_dir)
        per_class = [{"class": c, "weight": float(w), "l_c": None, "h_cond": None, "mse_bound": 0.0}
                     for c, w in enumerate(fit.weights.sum(1).tolist())]
        record.update(degenerate=True, reason="no Gaussian noise on z (sigma = 0): H(x|z) can be -inf",
                      l_c=None, h_cond=None, h_cond_per_dim=None, mse_bound=0.0, per_class=per_class)
        return record
    half_log_det = mx.log_det_ratio(fit.cov.flatten(0, 1), sigma ** 2, covariance, int(z.shape[1]))
    record.update(degenerate=False, **mixture_bounds(fit.weights, half_log_det.view(num_classes, -1).float(), d,
                                                      h_ref))
    return record
