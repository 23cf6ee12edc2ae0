"""CEM: conditional entropy maximization (Xia et al., "Theoretical Insights in Model Inversion Robustness and
Conditional Entropy Maximization for Collaborative Inference Systems", CVPR 2025, arXiv 2503.00383).

Threat model: a white-box attacker inverts the transmitted feature z = z_hat + eps. CEM lowers L_C (Eq. 7), an
upper bound on I(x; z), which raises the lower bound H(x) - L_C on H(x|z) (Eq. 3) and thereby Theorem 1's bound on
any attacker's MSE. It composes with every other defense: ``defenses: [{name: dropout}, {name: cem}]``.

The noise the bound needs: Eq. 3 holds for z = z_hat + Gaussian noise. When the rest of the stack adds no noise,
CEM adds N(0, sigma^2) to z itself (``transform``, on the device: training, attacks, export and serving all see it);
with the stack's own noise, Sigma_p is that noise's variance (Laplace noise: see NoiseModel; the audit corrects the
bound for its lower entropy). CEM models the value the noise is added to (the features after dropout/top-k).

Algorithm 1 without the second pass over the data: the features are captured during the training pass
(``observe``) into a preallocated (N, D) buffer; ``on_epoch_end`` fits k components per class to them (warm-started
k-means, one batched computation for all classes); the next epoch's batches apply Eq. 5-7 against that fit. Epoch 1
therefore trains without the CEM term (there is no fit yet; the released code is off in epoch 1 too). N in Eq. 5-6
is the number of images an epoch really shows (the training set, or fewer with ``train.max_steps_per_epoch``), the
same count the fitted weights are normalised by.

The strength (docs/cem.md, "Choosing lambda"). Read literally, each step descends L_D + lambda (B/N) L_C(Eq. 7)
with L_C summed over the D feature dimensions, so a given lambda pulls each sample's features 4-100x harder at one
(D, N) than at another. ``scale: feature_dim`` (default) multiplies Eq. 7 by N / (B D): a constant within a run, so
the optimum is still Eq. 8's, but ``lam`` is now the per-sample, per-dimension weight of the pull relative to the
cross-entropy, the same at any data or feature size. ``input_dim`` divides by the input dimension d instead
(lam L_C / d is -lam/2 log of Theorem 1's bound, up to a constant); ``literal`` is Eq. 8 as written (the paper's
lambda = 16). The run's metrics log the literal lambda each step amounts to (``cem/lambda_literal``).

Training length (``min_steps``, ``max_boost``): the gain follows lam x the steps with the term on, so a run with
fewer than ``min_steps`` of them (1,000: 10 epochs on 5k images have 360) scales lam by min(max_boost, min_steps /
steps); longer runs, the quick table's included, use lam as given (docs/cem.md).

Noise level (``noise_matched``, off by default): Eq. 7's gradient on a component's variance V is 1 / (2 (V + s^2)),
so at a stack noise s above CEM's own sigma a given lam pulls less. With it on, lam is scaled by (V + s^2) /
(V + sigma^2) (V the last fit's mean component variance), which gives the pull it has at sigma; exactly 1 at s =
sigma (the measured effect: docs/cem.md, "Against its own knob").

Against collapse (both change the path, not the objective): ``warmup_epochs`` ramps lambda linearly from 0 once the
term starts; ``separation`` scales it down when the closest components of different classes come within
``separation`` x Tr(Sigma_p) = D sigma^2 of each other (squared distance), the paper's Sec. 3.4 condition for noise
to hide the redundancy without hiding the class: at 1 x the weight is 0. It is off by default: on the quick table
the closest pair sat near 1.2 x on most rows, which switched CEM off there rather than guarding it; at the default
lam 0.1 nothing collapsed without it (docs/cem.md).

Data-parallel training (torchrun): every rank captures its own rows; the fit gathers all ranks' features in the
single-process order, so every rank fits the same mixture; the per-batch Eq. 5-6 statistics are summed over ranks.

Args (``Config``): see ``CEMConfig``. Shape: features (B, C, H, W) are flattened to (B, D).
Example: ``{name: cem}``, ``{name: cem, lam: 0.25}``, ``{name: cem, scale: literal, lam: 16}`` or
``{name: cem, variant: official}``.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Literal, Optional

import torch

from splitshield import parallel
from splitshield.config import IDENTITY_DEFAULTS
from splitshield.defenses import _mixture as mx
from splitshield.defenses.base import DEFENSES, Defense, DefenseEnv, NoiseModel, StepContext
from splitshield.errors import ConfigError

log = logging.getLogger(__name__)

_STATE = ("means", "weights", "cov", "counts")  # persistent mixture state, shaped lazily (D known at capture)


@dataclass
class CEMConfig:
    lam: float = 0.1  # strength; with scale feature_dim the per-sample, per-dimension weight (docs/cem.md)
    scale: Literal["feature_dim", "input_dim", "literal"] = "feature_dim"  # literal: Eq. 8 as written
    warmup_epochs: float = 1.0  # linear ramp of lam over this many epochs once the term starts (0: none)
    # A run with fewer than min_steps steps with the term on (epochs after the first x steps per epoch) gets lam x
    # min(max_boost, min_steps / those steps): the gain follows lam x steps (docs/cem.md, "Across cut layers and
    # training-set sizes"); from min_steps on (the quick table's 10 epochs on 15k images: 1,062) lam is as given.
    min_steps: int = 1000  # 0: off (lam as given at any length)
    max_boost: float = 3.0  # the largest multiple measured (5k images, 10 epochs: 3 x lam, 3 seeds)
    # > 1: full lam while inter-class means are >= this x D sigma^2 apart; 0 (default): off. At 4 it held CEM at
    # 0-10% of lam for most of training on 4 of the quick table's 7 rows (docs/cem.md, "Against collapse").
    separation: float = 0.0
    # lam is calibrated at CEM's own sigma. True: with the stack's noise at another variance s^2, lam is scaled by
    # (V + s^2) / (V + sigma^2), V the fitted components' mean variance, so the pull of Eq. 7 on their
    # log-variances is what it is at sigma (its gradient falls as 1 / (V + s^2)); exactly 1 at s = sigma.
    noise_matched: bool = False
    add_noise: bool = True  # add N(0, sigma^2) on the device when the rest of the stack adds no noise
    sigma: float = 0.025  # that noise (the paper's default std); Sigma_p = sigma^2 I
    variant: Literal["paper", "official"] = "paper"
    covariance: Optional[Literal["full", "diagonal", "isotropic"]] = None  # None: diagonal (paper) / isotropic
    components_per_class: Optional[int] = None  # None: 3 (paper, k = 3n) / 5 (official, VGG setting)
    kmeans_iters: int = 10  # Lloyd iterations per epoch, warm-started from the last fit (the release runs 50)
    jitter: float = 1e-6  # relative diagonal jitter of the full-covariance Cholesky factor
    gamma: float = 0.01  # official variant: hinge offset
    tau: float = 0.125  # official variant: hinge threshold factor (0.0625 for TinyImageNet in the release)

    def check(self, path: str) -> None:
        if self.lam < 0:
            raise ConfigError(f"{path}.lam: must be >= 0, got {self.lam}")
        if self.sigma <= 0:
            raise ConfigError(f"{path}.sigma: must be > 0 (Sigma_p = sigma^2 I), got {self.sigma}")
        if self.min_steps < 0 or self.max_boost < 1:
            raise ConfigError(f"{path}: min_steps must be >= 0 and max_boost >= 1, got {self.min_steps} and "
                              f"{self.max_boost}")
        if self.warmup_epochs < 0 or self.separation < 0:
            raise ConfigError(f"{path}: warmup_epochs and separation must be >= 0")
        if 0 < self.separation <= 1:
            raise ConfigError(f"{path}.separation: must be > 1 (or 0 to disable): at 1 x D sigma^2 the weight is "
                              f"already 0, got {self.separation}")
        if self.components_per_class is not None and self.components_per_class < 1:
            raise ConfigError(f"{path}.components_per_class: must be >= 1, got {self.components_per_class}")
        if self.kmeans_iters < 1:
            raise ConfigError(f"{path}.kmeans_iters: must be >= 1, got {self.kmeans_iters}")
        if self.variant == "official" and self.covariance not in (None, "isotropic"):
            raise ConfigError(f"{path}.covariance: the official variant uses one scalar variance per cluster; "
                              f"leave covariance unset or use variant: paper for {self.covariance!r}")
        if self.variant == "official" and self.noise_matched:
            raise ConfigError(f"{path}.noise_matched: applies to the paper variant's lam only (the official one "
                              "scales its own by the learning rate); drop it or use variant: paper")
        if self.gamma <= 0 or self.tau <= 0:
            raise ConfigError(f"{path}: gamma and tau must be > 0")

    @property
    def k(self) -> int:
        return self.components_per_class or (5 if self.variant == "official" else 3)

    @property
    def mode(self) -> mx.Covariance:
        return self.covariance or ("isotropic" if self.variant == "official" else "diagonal")


IDENTITY_DEFAULTS[("cem", "noise_matched")] = False  # runs from before the option keep their identity


@DEFENSES.register("cem")
class CEM(Defense):
    Config = CEMConfig

    def __init__(self, cfg: CEMConfig, env: DefenseEnv) -> None:
        super().__init__(cfg, env)
        for name in _STATE:
            self.register_buffer(name, torch.empty(0))
        self.register_buffer("fits", torch.zeros((), dtype=torch.long))  # number of epoch fits so far
        self.register_buffer("steps_active", torch.zeros((), dtype=torch.long))  # steps with the term on (warm-up)
        self.register_buffer("guard", torch.ones((), dtype=torch.float64))  # separation factor of the last fit
        self.register_buffer("noise_factor", torch.ones((), dtype=torch.float64))  # noise_matched's, of the last fit
        self._ready = False  # host mirror of fits > 0: no device sync per batch
        self._guard = 1.0  # host mirror of guard
        self._noise_factor = 1.0  # host mirror of noise_factor
        self._active = 0  # host mirror of steps_active
        self._length = self.length_factor()  # fixed by the run's length (env is frozen): once, not per step
        self._feats: Optional[torch.Tensor] = None  # (N, D) capture buffer; not checkpointed (refilled each epoch)
        self._labels: Optional[torch.Tensor] = None
        self._cursor = 0

    @classmethod
    def identity_config(cls) -> CEMConfig:
        return CEMConfig(lam=0.0, add_noise=False)

    def is_identity(self) -> bool:
        return self.cfg.lam == 0 and self.noise().variance == 0

    # --- the noise of the bound ---
    def noise(self) -> NoiseModel:
        """CEM's own noise: N(0, sigma^2) when the rest of the stack adds none (and add_noise), else none."""
        if self.cfg.add_noise and self.view.others_noise.variance == 0:
            return NoiseModel.gaussian(self.cfg.sigma)
        return NoiseModel()

    def transform(self, z: torch.Tensor) -> torch.Tensor:
        std = self.noise().std
        return z + std * torch.randn_like(z) if std > 0 else z

    def sigma2(self) -> float:
        """sigma^2 of Sigma_p: the variance of all the noise on z (the stack's and CEM's own); the configured sigma
        when there is none at all (add_noise: false on a noise-free stack: the bound is then for that noise)."""
        variance = (self.view.others_noise + self.noise()).variance
        return variance if variance > 0 else self.cfg.sigma ** 2

    # --- capture during the training pass, fit at the end of the epoch ---
    def on_epoch_start(self, epoch: int) -> None:
        self._cursor = 0

    def observe(self, ctx: StepContext) -> None:
        z, y = ctx.features.detach().flatten(1).float(), ctx.y
        if self._feats is None or self._feats.shape[1] != z.shape[1] or self._feats.device != z.device:
            shard = -(-self.env.epoch_size // parallel.world_size())  # this rank's rows of an epoch
            size = max(shard, z.shape[0])
            self._feats = torch.empty(size, z.shape[1], device=z.device)
            self._labels = torch.empty(size, dtype=torch.long, device=z.device)
        take = min(z.shape[0], self._feats.shape[0] - self._cursor)  # guard: never write past the buffer
        self._feats[self._cursor:self._cursor + take].copy_(z[:take])
        self._labels[self._cursor:self._cursor + take].copy_(y[:take])  # type: ignore[index]
        self._cursor += take

    @torch.no_grad()
    def on_epoch_end(self, epoch: int) -> None:
        if self._cursor == 0 or self._feats is None:
            return
        feats, labels = self._feats[:self._cursor], self._labels[:self._cursor]  # type: ignore[index]
        if parallel.world_size() > 1:
            # All ranks' rows in the order one process would have captured them; rows from index epoch_size on
            # are the sampler's padding (repeats of the epoch's first items) and are dropped.
            feats = parallel.gather_interleaved(feats, limit=self.env.epoch_size)
            labels = parallel.gather_interleaved(labels, limit=self.env.epoch_size)
        warm = self.means if self._ready and self.means.shape[-1] == feats.shape[1] else None
        gen = None
        if warm is None:  # own generator: CEM never draws from the global RNG (lam = 0 stays bit-exact)
            gen = torch.Generator(device=feats.device).manual_seed(self.env.seed * 1_000_003 + epoch)
        fit = mx.fit_mixture(feats, labels, self.env.num_classes, self.cfg.k, self.cfg.mode,
                             self.cfg.kmeans_iters, init_means=warm, generator=gen)
        for name in _STATE:
            setattr(self, name, getattr(fit, name).contiguous())
        self.fits += 1
        self._ready = True
        self.guard.fill_(self._separation_factor(fit.means, fit.counts, feats.shape[1]))
        self._guard = float(self.guard)
        self.noise_factor.fill_(self._matched_factor(fit.weights, fit.cov))
        self._noise_factor = float(self.noise_factor)
        log.debug("cem: fitted %d x %d components on %d features after epoch %d (guard %.3f)",
                  self.env.num_classes, self.cfg.k, feats.shape[0], epoch + 1, self._guard)

    def _separation_factor(self, means: torch.Tensor, counts: torch.Tensor, dim: int) -> float:
        """1 while the closest inter-class means are >= separation x D sigma^2 apart, linearly down to 0 at 1 x."""
        if self.cfg.separation == 0:
            return 1.0
        ratio = float(mx.class_separation(means, counts)) / (dim * self.sigma2())
        return min(1.0, max(0.0, (ratio - 1.0) / (self.cfg.separation - 1.0)))

    def _matched_factor(self, weights: torch.Tensor, cov: torch.Tensor) -> float:
        """``noise_matched``: (V + s^2) / (V + sigma^2) for the fit's mean component variance V; else 1."""
        if not self.cfg.noise_matched:
            return 1.0
        v = mx.mean_variance(weights, cov, self.cfg.mode)
        return (v + self.sigma2()) / (v + self.cfg.sigma ** 2)

    # --- the per-batch term ---
    def weight(self, batch: int, dim: int) -> float:
        """The factor on this step's L_C: lam, its scale (feature_dim: N / (B D); input_dim: N / (B d)), the
        warm-up ramp, the separation guard and noise_matched's factor. Host arithmetic only (no device
        synchronisation)."""
        cfg = self.cfg
        unit = {"literal": 1.0, "feature_dim": self.env.epoch_size / (batch * dim),
                "input_dim": self.env.epoch_size / (batch * math.prod(self.env.input_shape))}[cfg.scale]
        steps_per_epoch = -(-self.env.epoch_size // self.env.batch_size)
        ramp = 1.0 if cfg.warmup_epochs == 0 else min(1.0, (self._active + 1) / (cfg.warmup_epochs *
                                                                                 steps_per_epoch))
        return cfg.lam * unit * ramp * self._guard * self._length * self._noise_factor

    def length_factor(self) -> float:
        """``min_steps``: 1 from min_steps steps with the term on, else min(max_boost, min_steps / steps)."""
        steps_on = (self.env.epochs - 1) * -(-self.env.epoch_size // self.env.batch_size)  # no fit before epoch 2
        if self.cfg.min_steps == 0 or steps_on >= self.cfg.min_steps:
            return 1.0
        return min(self.cfg.max_boost, self.cfg.min_steps / max(steps_on, 1))

    def penalty(self, ctx: StepContext) -> Optional[torch.Tensor]:
        if self.cfg.lam == 0 or not self._ready:
            return None
        z = ctx.features.flatten(1).float()  # never z after noise, never the cloud: the gradient reaches the encoder
        if z.shape[1] != self.means.shape[-1]:
            raise ConfigError(f"cem: features have {z.shape[1]} dims but the mixture was fitted on "
                              f"{self.means.shape[-1]}; retrain instead of resuming with a changed model")
        # Under torchrun, batch statistics of the global batch (every rank then updates the same state).
        reduce = parallel.global_sum if parallel.world_size() > 1 else None
        means = self.means.flatten(0, 1)  # (k, D)
        comp = mx.assign_batch(z, ctx.y, self.means)
        sigma2 = self.sigma2()
        if self.cfg.variant == "official":
            loss = mx.official_step(z, comp, means, self.counts.flatten(), self.cov.flatten(),
                                    self.env.num_classes, sigma2, self.cfg.gamma, self.cfg.tau, reduce)
            ctx.logs["cem/loss"] = loss.detach()
            return self.cfg.lam * mx.official_lambda_scale(ctx.lr) * loss
        shape = self.cov.shape
        loss, weights, cov = mx.paper_step(z, comp, means, self.weights.flatten(), self.cov.flatten(0, 1),
                                           self.env.epoch_size, sigma2, self.cfg.mode, self.cfg.jitter, reduce)
        with torch.no_grad():  # Algorithm 1 keeps the updated pi_j and Sigma_j for the following batches
            self.weights.copy_(weights.view_as(self.weights))
            self.cov.copy_(cov.view(shape))
        factor = self.weight(z.shape[0] * parallel.world_size(), z.shape[1])
        self._active += 1
        self.steps_active += 1  # the checkpointed copy (device op, no synchronisation)
        ctx.logs["cem/loss"] = loss.detach()
        ctx.logs["cem/lambda_literal"] = torch.tensor(factor, device=z.device)
        ctx.logs["cem/guard"] = torch.tensor(self._guard, device=z.device)
        return factor * loss

    # --- checkpoints: the mixture buffers take the shapes stored in the checkpoint ---
    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        device = self.fits.device
        # Checkpoints from before noise_matched existed have no noise_factor: theirs was 1.
        state_dict.setdefault(prefix + "noise_factor", torch.ones((), dtype=torch.float64))
        for name in _STATE:
            if prefix + name in state_dict:
                self._buffers[name] = torch.empty_like(state_dict[prefix + name], device=device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._ready = bool(self.fits.item() > 0)
        self._guard = float(self.guard)
        self._noise_factor = float(self.noise_factor)
        self._active = int(self.steps_active)
