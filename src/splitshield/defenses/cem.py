"""CEM: conditional entropy maximization (Xia et al., "Theoretical Insights in Model Inversion Robustness and
Conditional Entropy Maximization for Collaborative Inference Systems", CVPR 2025, arXiv 2503.00383).

Threat model: a white-box attacker inverts the transmitted feature z = z_hat + eps. CEM lowers L_C (Eq. 7), which
raises the lower bound H(x) - L_C on H(x|z) (Eq. 3) and thereby Theorem 1's bound on any attacker's MSE.
It composes with every other defense: ``defenses: [{name: gaussian_noise, sigma: 0.025}, {name: cem}]``.

Algorithm 1 without the second pass over the data: the encoder outputs z_hat (detached) are captured during the
training pass into a preallocated (N, D) buffer; ``on_epoch_end`` fits k components per class to them (warm-started
k-means, one batched computation for all classes); the next epoch's batches apply Eq. 5-7 against that fit.
Epoch 1 therefore trains without the CEM term (there is no fit yet; the released code is off in epoch 1 too).

Data-parallel training (torchrun): every rank captures its own rows; the fit gathers all ranks' features in the
single-process order, so every rank fits the same mixture, equal to one process's fit on the same features; the
per-batch Eq. 5-6 statistics are summed over ranks, so the mixture state stays identical on all ranks.

Args (``Config``): lam (lambda of Eq. 8; 0 is the identity), variant ("paper" = Eq. 5-7; "official" = the
authors' released loss, see docs/cem.md), covariance (None = diagonal for paper, isotropic for official),
components_per_class (None = 3 paper, 5 official), sigma (noise std used for Sigma_p when the stack adds none).
Shape: z_hat (B, C, H, W) is flattened to (B, D).
Example: ``{name: cem, lam: 16}`` or ``{name: cem, variant: official}``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal, Optional

import torch

from splitshield.defenses import _mixture as mx
from splitshield.defenses.base import DEFENSES, Defense, DefenseEnv, StepContext
from splitshield.errors import ConfigError

log = logging.getLogger(__name__)

_STATE = ("means", "weights", "cov", "counts")  # persistent mixture state, shaped lazily (D known at capture)


@dataclass
class CEMConfig:
    lam: float = 16.0  # lambda of Eq. 8: the paper's value; with Eq. 7 summed over D ~ 400 dims it collapses long
    # trainings, 0.25-1 is the useful range there (docs/cem.md, "Choosing lambda")
    variant: Literal["paper", "official"] = "paper"
    covariance: Optional[Literal["full", "diagonal", "isotropic"]] = None  # None: diagonal (paper) / isotropic
    components_per_class: Optional[int] = None  # None: 3 (paper, k = 3n) / 5 (official, VGG setting)
    sigma: float = 0.025  # Sigma_p = sigma^2 I when no other defense of the stack adds Gaussian noise
    kmeans_iters: int = 10  # Lloyd iterations per epoch, warm-started from the last fit (the release runs 50)
    jitter: float = 1e-6  # relative diagonal jitter of the full-covariance Cholesky factor
    gamma: float = 0.01  # official variant: hinge offset
    tau: float = 0.125  # official variant: hinge threshold factor (0.0625 for TinyImageNet in the release)

    def check(self, path: str) -> None:
        if self.lam < 0:
            raise ConfigError(f"{path}.lam: must be >= 0, got {self.lam}")
        if self.sigma <= 0:
            raise ConfigError(f"{path}.sigma: must be > 0 (Sigma_p = sigma^2 I), got {self.sigma}")
        if self.components_per_class is not None and self.components_per_class < 1:
            raise ConfigError(f"{path}.components_per_class: must be >= 1, got {self.components_per_class}")
        if self.kmeans_iters < 1:
            raise ConfigError(f"{path}.kmeans_iters: must be >= 1, got {self.kmeans_iters}")
        if self.variant == "official" and self.covariance not in (None, "isotropic"):
            raise ConfigError(f"{path}.covariance: the official variant uses one scalar variance per cluster; "
                              f"leave covariance unset or use variant: paper for {self.covariance!r}")
        if self.gamma <= 0 or self.tau <= 0:
            raise ConfigError(f"{path}: gamma and tau must be > 0")

    @property
    def k(self) -> int:
        return self.components_per_class or (5 if self.variant == "official" else 3)

    @property
    def mode(self) -> mx.Covariance:
        return self.covariance or ("isotropic" if self.variant == "official" else "diagonal")


@DEFENSES.register("cem")
class CEM(Defense):
    Config = CEMConfig

    def __init__(self, cfg: CEMConfig, env: DefenseEnv) -> None:
        super().__init__(cfg, env)
        for name in _STATE:
            self.register_buffer(name, torch.empty(0))
        self.register_buffer("fits", torch.zeros((), dtype=torch.long))  # number of epoch fits so far
        self._ready = False  # host mirror of fits > 0: no device sync per batch
        self._feats: Optional[torch.Tensor] = None  # (N, D) capture buffer; not checkpointed (refilled each epoch)
        self._labels: Optional[torch.Tensor] = None
        self._cursor = 0

    @classmethod
    def identity_config(cls) -> CEMConfig:
        return CEMConfig(lam=0.0)

    def is_identity(self) -> bool:
        return self.cfg.lam == 0

    def sigma(self) -> float:
        """Std of the Gaussian noise on z (Sigma_p = sigma^2 I): the stack's, else the configured fallback."""
        stack = self.stack
        std = stack.noise_std() if stack is not None else 0.0
        return std if std > 0 else self.cfg.sigma

    # --- capture during the training pass, fit at the end of the epoch ---
    def on_epoch_start(self, epoch: int) -> None:
        self._cursor = 0

    def _capture(self, z: torch.Tensor, y: torch.Tensor) -> None:
        if self._feats is None or self._feats.shape[1] != z.shape[1] or self._feats.device != z.device:
            from splitshield.train import distributed  # lazy: splitshield.train imports the defenses

            shard = -(-self.env.train_size // distributed.world_size())  # this rank's rows of an epoch
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
        from splitshield.train import distributed

        # max_steps_per_epoch may stop early: fit on what was captured.
        feats, labels = self._feats[:self._cursor], self._labels[:self._cursor]  # type: ignore[index]
        if distributed.world_size() > 1:
            # All ranks' rows in the order one process would have captured them; rows from index train_size on
            # are the sampler's padding (repeats of the epoch's first items) and are dropped.
            feats = distributed.gather_interleaved(feats, limit=self.env.train_size)
            labels = distributed.gather_interleaved(labels, limit=self.env.train_size)
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
        log.debug("cem: fitted %d x %d components on %d features after epoch %d", self.env.num_classes,
                  self.cfg.k, feats.shape[0], epoch + 1)

    # --- the per-batch term ---
    def penalty(self, ctx: StepContext) -> Optional[torch.Tensor]:
        self._capture(ctx.z_hat.detach().flatten(1).float(), ctx.y)
        if self.cfg.lam == 0 or not self._ready:
            return None
        z = ctx.z_hat.flatten(1).float()  # only z_hat: the gradient reaches the encoder, never the cloud
        if z.shape[1] != self.means.shape[-1]:
            raise ConfigError(f"cem: features have {z.shape[1]} dims but the mixture was fitted on "
                              f"{self.means.shape[-1]}; retrain instead of resuming with a changed model")
        from splitshield.train import distributed

        # Under torchrun, batch statistics of the global batch (every rank then updates the same state).
        reduce = distributed.global_sum if distributed.world_size() > 1 else None
        means = self.means.flatten(0, 1)  # (k, D)
        comp = mx.assign_batch(z, ctx.y, self.means)
        sigma2 = self.sigma() ** 2
        if self.cfg.variant == "official":
            loss = mx.official_step(z, comp, means, self.counts.flatten(), self.cov.flatten(),
                                    self.env.num_classes, sigma2, self.cfg.gamma, self.cfg.tau, reduce)
            ctx.logs["cem/loss"] = loss.detach()
            return self.cfg.lam * mx.official_lambda_scale(ctx.lr) * loss
        shape = self.cov.shape
        loss, weights, cov = mx.paper_step(z, comp, means, self.weights.flatten(), self.cov.flatten(0, 1),
                                           self.env.train_size, sigma2, self.cfg.mode, self.cfg.jitter, reduce)
        with torch.no_grad():  # Algorithm 1 keeps the updated pi_j and Sigma_j for the following batches
            self.weights.copy_(weights.view_as(self.weights))
            self.cov.copy_(cov.view(shape))
        ctx.logs["cem/loss"] = loss.detach()
        return self.cfg.lam * loss

    # --- checkpoints: the mixture buffers take the shapes stored in the checkpoint ---
    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        device = self.fits.device
        for name in _STATE:
            if prefix + name in state_dict:
                self._buffers[name] = torch.empty_like(state_dict[prefix + name], device=device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._ready = bool(self.fits.item() > 0)
