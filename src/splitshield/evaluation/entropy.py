"""Entropy audit of a trained run: what the CEM paper's bounds soundly say about the run's features.

What holds (docs/cem.md, "The audit"): z = z_pre + eps, z_pre the features the noise is added to (after dropout,
top-k ...) and eps the stack's additive noise. For any hard partition of z_pre into components j with weights
pi_j and covariances Sigma_j, I(x; z) <= I(z_pre; z) <= L_C (Eq. 7) = sum_j pi_j (-log pi_j + 1/2 log |Sigma_j +
Sigma_p| / |Sigma_p|) whatever the distribution of z_pre (a Gaussian has the largest entropy for its covariance);
diagonal and isotropic covariances give looser, still valid, bounds. Laplace (non-Gaussian) noise has less entropy
than a Gaussian of the same variance: the bound adds that gap (NoiseModel.entropy_gap, ~0.072 nats per coordinate).
This upper bound on the information z carries about x is the audit's headline, in nats and in bits per input
dimension.

What does not hold without more knowledge: Theorem 1's MSE bound xi >= exp(2 H(x|z)/d) / (2 pi e) needs H(x), the
differential entropy of the data, which is unknown for images. The audit's MSE figure uses a reference H(x) and is
labelled with it: the default reference 0 nats (the uniform density on [0, 1]^d) is the *largest* entropy any image
distribution can have, so that figure overstates H(x|z): it ranks runs of one dataset (the paper's "relative
conditional entropy") and is not a lower bound; an attack may and often does beat it. Only with the true H(x)
(``h_x``, e.g. for synthetic data whose density is known) is the figure a lower bound on any attacker's MSE.

Without noise L_C is infinite: the audit reports that case as ``degenerate`` (no bound on I(x; z)).
"""
from __future__ import annotations

import logging
import math
from typing import Any, Literal, Optional

import torch
from torch.utils.data import DataLoader

from splitshield.data import to_unit
from splitshield.defenses import _mixture as mx
from splitshield.defenses.base import NoiseModel
from splitshield.train.build import LoadedRun

log = logging.getLogger(__name__)

TWO_PI_E = 2 * math.pi * math.e
UNIFORM_REFERENCE = ("the uniform density on [0,1]^d (0 nats): an upper bound on any image distribution's H(x), "
                     "so the MSE figure below is relative (it ranks runs) and not a lower bound")


def mse_from_entropy(h_cond: float, d: int) -> float:
    """Theorem 1's expression exp(2 H(x|z) / d) / (2 pi e) (a lower bound on the MSE only for the true H(x|z))."""
    return math.exp(2.0 * h_cond / d) / TWO_PI_E


def mixture_bounds(weights: torch.Tensor, half_log_det: torch.Tensor, d: int, gap: float = 0.0,
                   h_ref: float = 0.0) -> dict[str, Any]:
    """L_C and the bound on I(x; z) overall and per class. weights (C, K) sum to 1; half_log_det (C, K) is
    1/2 log(|Sigma_j + Sigma_p| / |Sigma_p|); ``gap`` the noise's entropy gap in nats summed over the feature
    dimensions (0 for Gaussian noise). Per class: the class's own components with weights conditioned on it."""
    overall = float(mx.entropy_loss(weights.flatten(), half_log_det.flatten()))
    per_class = []
    class_mass = weights.sum(1)
    for c in range(weights.shape[0]):  # C scalars for a report, after the batched math
        mass = float(class_mass[c])
        if mass <= 0:
            per_class.append({"class": c, "weight": 0.0, "l_c": None, "mi_bound": None, "mse_index": None})
            continue
        lc = float(mx.entropy_loss(weights[c] / mass, half_log_det[c]))
        per_class.append({"class": c, "weight": mass, "l_c": lc, "mi_bound": lc + gap,
                          "mse_index": mse_from_entropy(h_ref - lc - gap, d)})
    mi = overall + gap
    return {"l_c": overall, "mi_bound": mi, "mi_bound_bits_per_dim": mi / (d * math.log(2)),
            "h_cond_relative": h_ref - mi, "mse_index": mse_from_entropy(h_ref - mi, d), "per_class": per_class}


@torch.no_grad()
def training_features(run: LoadedRun, dataset: Any, batch_size: int = 512, max_samples: Optional[int] = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """The features the noise is added to (edge output after the stack's transforms, one draw of any random
    ones), (N, D), and the labels (N,), over the training set in one no-grad pass in eval mode."""
    feats, labels, seen = [], [], 0
    for images, y in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        if max_samples is not None and seen >= max_samples:
            break
        z_hat = run.model.edge(to_unit(images.to(run.device)))
        feats.append(run.defenses.transform_parts(z_hat)[0].flatten(1).float())
        labels.append(y.to(run.device))
        seen += len(y)
    z, y = torch.cat(feats), torch.cat(labels)
    return (z[:max_samples], y[:max_samples]) if max_samples is not None else (z, y)


def audit(run: LoadedRun, dataset: Any, *, components_per_class: int = 3,
          covariance: Literal["full", "diagonal", "isotropic"] = "diagonal", kmeans_iters: int = 30,
          h_x: Optional[float] = None, max_samples: Optional[int] = None, seed: int = 0) -> dict[str, Any]:
    """The bound on I(x; z) of a trained run, and the MSE figure of Theorem 1 with its H(x) reference named:
    ``h_x`` (nats, the data's true differential entropy) when known, making it a lower bound; else the uniform
    reference (0 nats), making it a relative index."""
    with torch.random.fork_rng(devices=[run.device] if run.device.type == "cuda" else []):
        torch.manual_seed(seed)  # random transforms (dropout) drawn reproducibly, the caller's RNG left alone
        z, y = training_features(run, dataset, max_samples=max_samples)
    record = feature_bounds(z, y, int(run.info.num_classes), run.defenses.noise_model(),
                            int(math.prod(run.info.input_shape)), components_per_class=components_per_class,
                            covariance=covariance, kmeans_iters=kmeans_iters, h_x=h_x, seed=seed)
    if record["degenerate"]:
        log.warning("%s transmits z without additive noise: I(x; z) has no finite bound here", run.run_dir)
    return {**record, "epoch": run.epoch}


def feature_bounds(z: torch.Tensor, y: torch.Tensor, num_classes: int, noise: NoiseModel, input_dim: int, *,
                   components_per_class: int = 3, covariance: Literal["full", "diagonal", "isotropic"] = "diagonal",
                   kmeans_iters: int = 30, h_x: Optional[float] = None, seed: int = 0) -> dict[str, Any]:
    """The audit's computation on features z (N, D) the ``noise`` is added to, with labels y (N,): a k-per-class
    hard mixture fit, L_C (Eq. 7) with Sigma_p = the noise's variance, the entropy gap of non-Gaussian noise, and
    Theorem 1's expression with ``h_x`` (true H(x)) or the uniform reference."""
    gen = torch.Generator(device=z.device).manual_seed(seed)
    fit = mx.fit_mixture(z, y, num_classes, components_per_class, covariance, kmeans_iters, generator=gen)
    d, dim = int(input_dim), int(z.shape[1])
    h_ref = 0.0 if h_x is None else float(h_x)
    record: dict[str, Any] = {
        "noise_std": noise.std, "noise_entropy_gap_per_dim": noise.entropy_gap, "input_dim": d, "feature_dim": dim,
        "samples": int(z.shape[0]), "components_per_class": components_per_class, "covariance": covariance,
        "h_ref": h_ref, "h_ref_is_true": h_x is not None,
        "h_ref_meaning": "the data's differential entropy H(x), given: the MSE figure is a lower bound"
        if h_x is not None else UNIFORM_REFERENCE,
    }
    if noise.variance <= 0:
        per_class = [{"class": c, "weight": float(w), "l_c": None, "mi_bound": None, "mse_index": None}
                     for c, w in enumerate(fit.weights.sum(1).tolist())]
        record.update(degenerate=True, reason="no additive noise on z (sigma = 0): L_C is infinite, nothing bounds "
                      "I(x; z)", l_c=None, mi_bound=None, mi_bound_bits_per_dim=None, h_cond_relative=None,
                      mse_index=None, mse_lower_bound=None, per_class=per_class)
        return record
    half_log_det = mx.log_det_ratio(fit.cov.flatten(0, 1), noise.variance, covariance, dim)
    record.update(degenerate=False, **mixture_bounds(fit.weights, half_log_det.view(num_classes, -1).float(), d,
                                                      gap=dim * noise.entropy_gap, h_ref=h_ref))
    record["mse_lower_bound"] = record["mse_index"] if h_x is not None else None
    return record
