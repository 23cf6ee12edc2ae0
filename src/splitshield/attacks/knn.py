"""k-nearest-neighbour inversion: the mean image of the attacker's k images whose features lie nearest to z."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Optional

import torch

from splitshield.attacks import ATTACKS
from splitshield.attacks.base import Attack, AttackConfig
from splitshield.data import to_unit
from splitshield.errors import ConfigError


@dataclass
class KNNConfig(AttackConfig):
    k: int = 5
    # transmitted: the database holds the features as the device sends them (one draw of its noise/dropout per
    # image); clean: the edge outputs before the defenses' transforms (a white-box attacker can compute them).
    database: Literal["transmitted", "clean"] = "clean"

    def check(self, path: str) -> None:
        if self.k < 1:
            raise ConfigError(f"{path}.k: must be >= 1, got {self.k}")


@ATTACKS.register("knn")
class KNNAttack(Attack):
    """kNN MIA: no training; reconstruct z as the mean of the attacker images whose features are nearest to it.

    Threat model: see attacks/base.py. The attacker encodes its own images with the victim's edge (white-box) and
    keeps (feature, image) pairs; a transmitted z is answered with the mean of the ``k`` images at the smallest
    Euclidean distance in feature space. Nonparametric and budget-free, it is the floor every learned attack must
    beat: a decoder that does worse has not learned (docs/attacks.md).

    Args (``KNNConfig``): k=5, database="clean", batch_size=256 (queries per distance block), train_size=None.
    Shape: invert (B, *feature_shape) -> (B, C, H, W) in [0, 1].
    Example: ``run_attack("runs/quick", "knn", "train", {"k": 5})``
    """

    Config = KNNConfig

    def __init__(self, cfg: KNNConfig, victim: Any, **kwargs: Any) -> None:
        super().__init__(cfg, victim, **kwargs)
        self.keys: Optional[torch.Tensor] = None  # (N, D) float32
        self.key_norms: Optional[torch.Tensor] = None  # (N,)
        self.images: Optional[torch.Tensor] = None  # (N, C, H, W) uint8 on the attack device

    def fit(self, x_fit: torch.Tensor, x_val: torch.Tensor) -> None:
        if self.cfg.database == "clean":
            keys = self.edge_features(x_fit)
        else:
            keys = torch.cat([z for _, z in self.pairs(x_fit)]) if len(x_fit) else self.edge_features(x_fit)
        self.keys = keys.flatten(1).float()
        self.key_norms = (self.keys * self.keys).sum(1)
        self.images = x_fit.to(self.device)
        self.info.update(converged=True, database=self.cfg.database, k=min(self.cfg.k, len(x_fit)))

    @torch.no_grad()
    def invert(self, z: torch.Tensor) -> torch.Tensor:
        assert self.keys is not None and self.key_norms is not None and self.images is not None, "fit() first"
        q = z.flatten(1).float()
        # ||q - k||^2 = ||q||^2 - 2 q.k + ||k||^2; ||q||^2 is the same for every key of a row, so it is left out.
        d2 = self.key_norms.unsqueeze(0) - 2.0 * q @ self.keys.t()  # (B, N)
        nearest = d2.topk(min(self.cfg.k, d2.shape[1]), dim=1, largest=False).indices  # (B, k)
        return to_unit(self.images[nearest].flatten(0, 1)).view(*nearest.shape, *self.images.shape[1:]).mean(1)
