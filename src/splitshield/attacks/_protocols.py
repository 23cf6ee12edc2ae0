"""The two evaluation protocols of the CEM paper, as deterministic, disjoint index splits.

- ``train``: the attacker fits on the training set's features and is scored on the whole test set.
- ``infer``: the attacker fits on 90% of the test set and is scored on the other 10%.

In both, the attacker's validation split (checkpoint selection) is held out from the attacker's *own* data, never
from the scored images. Everything is a seeded permutation, so a seed gives the same split on any machine.
The scored images are ordered so that their first items are the same test images under both protocols
(``score[:k]`` = the first k of the test permutation); figures use them, so both protocols show the same images.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Optional

import torch

from splitshield.errors import ConfigError

Protocol = Literal["train", "infer"]
PROTOCOLS: tuple[str, ...] = ("train", "infer")
INFER_SCORE_FRACTION = 0.1


@dataclass(frozen=True)
class ProtocolSplit:
    """Indices into the run's train set or test set. ``fit`` and ``val`` index ``fit_source``; ``score`` the test set."""

    protocol: str
    fit_source: Literal["train", "test"]
    fit: torch.Tensor  # (n_fit,) int64
    val: torch.Tensor  # (n_val,) int64
    score: torch.Tensor  # (n_score,) int64, test-set indices

    def summary(self) -> dict[str, object]:
        return {"protocol": self.protocol, "fit_source": self.fit_source, "n_fit": len(self.fit),
                "n_val": len(self.val), "n_score": len(self.score)}


def _perm(n: int, seed: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


def split_protocol(protocol: str, n_train: int, n_test: int, *, seed: int = 0, val_fraction: float = 0.05,
                   train_size: Optional[int] = None, score_size: Optional[int] = None) -> ProtocolSplit:
    """Split for ``protocol``. ``train_size`` caps the attacker's fitting images (after the validation split),
    ``score_size`` caps the scored images (a prefix of the scored order, so figure images stay included)."""
    if protocol not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {protocol!r}; valid: {', '.join(PROTOCOLS)}")
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in (0, 1), got {val_fraction}")
    test_order = _perm(n_test, seed)
    if protocol == "train":
        source, own, score = "train", _perm(n_train, seed + 1), test_order
    else:
        n_score = max(1, math.ceil(INFER_SCORE_FRACTION * n_test))
        source, own, score = "test", test_order[n_score:], test_order[:n_score]
    n_val = max(1, int(round(val_fraction * len(own))))
    if len(own) - n_val < 1:
        raise ConfigError(f"protocol {protocol!r}: {len(own)} attacker images are too few for a validation split")
    val, fit = own[:n_val], own[n_val:]
    if train_size is not None:
        if train_size <= 0:
            raise ConfigError(f"train_size must be positive, got {train_size}")
        fit = fit[:train_size]
    if score_size is not None:
        if score_size <= 0:
            raise ConfigError(f"score_size must be positive, got {score_size}")
        score = score[:score_size]
    return ProtocolSplit(protocol, source, fit.clone(), val.clone(), score.clone())  # type: ignore[arg-type]
