"""``AttackResult``: the typed view of one attack's record, the same record the CLI stores in
results/attack-<name>-<protocol>.json (the public API returns it; ``record`` keeps the full stored dict)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch


@dataclass(frozen=True)
class AttackResult:
    """One model-inversion attack, scored (docs/attacks.md, "What counts").

    ``mse``/``psnr``/``ssim`` are over the scored images (pixels in [0, 1]); ``baseline_mse`` is predicting the
    attacker's mean image for every input. ``learned``: the attack beat that baseline. ``converged``: the fit
    stopped on its validation plateau within its budget (True for attacks with nothing to fit; None for a fixed
    budget). ``counts``: learned, converged and the victim above chance; only such results are evidence.
    ``reconstructions``: the scored images' reconstructions (N, C, H, W) in [0, 1] when the call kept them."""

    attack: str
    protocol: str
    seed: int
    mse: float
    psnr: float
    ssim: float
    n: int  # scored images
    baseline_mse: float
    victim_accuracy: Optional[float]
    learned: bool
    converged: Optional[bool]
    counts: bool
    status: str  # "ok", "did not learn", "not converged" or "victim at chance"
    best_epoch: Optional[int]  # the kept epoch of a fitted attacker (1-based), None for attacks without epochs
    epochs_run: Optional[int]
    seconds: float
    record: dict[str, Any] = field(repr=False, compare=False)
    reconstructions: Optional[torch.Tensor] = field(default=None, repr=False, compare=False)
    originals: Optional[torch.Tensor] = field(default=None, repr=False, compare=False)  # uint8 scored images

    @property
    def beat_mean_image(self) -> bool:
        return self.learned

    @property
    def mse_gain_over_baseline(self) -> float:
        """How far below the mean-image MSE the attack got, as a fraction of it (0: no better than the mean)."""
        return 1.0 - self.mse / self.baseline_mse if self.baseline_mse > 0 else 0.0

    @classmethod
    def from_record(cls, record: dict[str, Any], reconstructions: Optional[torch.Tensor] = None,
                    originals: Optional[torch.Tensor] = None) -> "AttackResult":
        info = record.get("info", {})
        acc = record.get("victim_accuracy")
        return cls(attack=record["attack"], protocol=record["protocol"], seed=int(record["seed"]),
                   mse=float(record["mse"]), psnr=float(record["psnr"]), ssim=float(record["ssim"]),
                   n=int(record["n"]), baseline_mse=float(record["baseline"]["mse"]),
                   victim_accuracy=None if acc is None else float(acc), learned=bool(record["learned"]),
                   converged=record.get("converged"), counts=bool(record["counts"]), status=str(record["status"]),
                   best_epoch=info.get("best_epoch"), epochs_run=info.get("epochs_run"),
                   seconds=float(record["seconds"]), record=record, reconstructions=reconstructions,
                   originals=originals)

    def summary(self) -> str:
        """One line: MSE, PSNR, SSIM against the mean image, and whether it counts."""
        return (f"{self.attack} ({self.protocol}): mse {self.mse:.5f} (mean image {self.baseline_mse:.5f}), "
                f"psnr {self.psnr:.2f} dB, ssim {self.ssim:.4f}, {self.status}")
