"""BiDO, bilateral dependency optimisation (Peng et al., KDD 2022).

loss += lambda_x * sum_j d(X, Z_j) - lambda_y * sum_j d(Z_j, Y): less dependence between the input and each
edge representation Z_j, more between Z_j and the label. Z_j are the edge's block outputs (``layers: all``;
the last one replaced by the transmitted z, i.e. after noise/dropout of earlier defenses) or only the transmitted
z (``layers: transmitted``). X and Z_j use the Gaussian kernel exp(-||a - b||^2 / (2 s^2 D)) with s = ``sigma``
and D the per-sample dimension; Y (one-hot) uses the linear kernel Y Y^T.

d is HSIC or COCO (see _dependence.py), in the paper's form (``form: paper``: HSIC (m-1)^-2 tr(KHLH); COCO with
the spectral norm) or the authors' released-code form (``form: authors``: normalised HSIC
tr((KH)(KH + eps m I)^-1 (LH)(LH + eps m I)^-1), eps = 1e-5; COCO with the Frobenius norm). Reported settings:
HSIC (lambda_x, lambda_y) = (0.05, 0.5) or (0.1, 2); COCO (1, 50) on MNIST.

Example::

    defenses: [{name: bido, measure: hsic, lambda_x: 0.05, lambda_y: 0.5}]
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import torch
import torch.nn.functional as F

from splitshield.defenses._dependence import coco, gaussian_kernel, hsic, linear_kernel
from splitshield.defenses.base import DEFENSES, Defense, StepContext
from splitshield.errors import ConfigError


@DEFENSES.register("bido")
class BiDO(Defense):
    @dataclass
    class Config:
        measure: Literal["hsic", "coco"] = "hsic"
        form: Literal["paper", "authors"] = "paper"  # authors: normalised HSIC / Frobenius COCO
        lambda_x: float = 0.05  # weight of sum_j d(X, Z_j), minimised
        lambda_y: float = 0.5  # weight of sum_j d(Z_j, Y), maximised
        sigma: float = 5.0  # Gaussian kernel width s
        layers: Literal["all", "transmitted"] = "all"  # every edge block output, or the transmitted z only

        def check(self, path: str) -> None:
            if self.lambda_x < 0 or self.lambda_y < 0:
                raise ConfigError(f"{path}: lambda_x and lambda_y must be >= 0")
            if self.sigma <= 0:
                raise ConfigError(f"{path}.sigma: must be positive, got {self.sigma}")

    @property
    def needs_blocks(self) -> bool:  # type: ignore[override]
        return self.cfg.layers == "all" and not self.is_identity()

    @classmethod
    def identity_config(cls) -> "BiDO.Config":
        return cls.Config(lambda_x=0.0, lambda_y=0.0)

    def is_identity(self) -> bool:
        return self.cfg.lambda_x == 0.0 and self.cfg.lambda_y == 0.0

    def _d(self, k: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
        authors = self.cfg.form == "authors"
        return hsic(k, l, normalized=authors) if self.cfg.measure == "hsic" else coco(k, l, frobenius=authors)

    def penalty(self, ctx: StepContext) -> Optional[torch.Tensor]:
        if self.is_identity():
            return None
        reps = list(ctx.blocks[:-1]) + [ctx.z] if ctx.blocks is not None else [ctx.z]
        kx = gaussian_kernel(ctx.x, self.cfg.sigma)  # (B, B)
        ly = linear_kernel(F.one_hot(ctx.y, self.env.num_classes).float())  # (B, B)
        dx = dy = ctx.x.new_zeros(())
        for z in reps:
            kz = gaussian_kernel(z, self.cfg.sigma)
            dx = dx + self._d(kx, kz)
            dy = dy + self._d(kz, ly)
        ctx.logs["bido/d_xz"] = dx.detach()
        ctx.logs["bido/d_zy"] = dy.detach()
        return self.cfg.lambda_x * dx - self.cfg.lambda_y * dy
