"""The simulated attacker of attacker-aware training (ResSFL, PATROL, Noise_ARL): a decoder from z back to x.

It is pre-trained on (z, x) pairs of the initial encoder, then updated after every model step on the step's
transmitted features (``update``), with its own Adam; the encoder is penalised through z by how well it
reconstructs (``leakage``). Its parameters are not model parameters: the model optimizer never sees them and the
penalty does not accumulate gradients in them. Its optimizer state travels in checkpoints via extra_state.
Under torchrun each rank steps on its rows of the global batch and the gradients are averaged over ranks (its batch
norm is synchronised by the loop), so every rank holds the same attacker, the one a single process would train.
"""
from __future__ import annotations

import copy
import logging
from typing import Any, Callable, Literal, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from splitshield import parallel
from splitshield.data import to_unit
from splitshield.nets.decoder import ResidualDecoder
from splitshield.nets.ssim import ssim
from splitshield.precision import Numerics

log = logging.getLogger(__name__)

Measure = Literal["ssim", "mse"]


class SimulatedAttacker(nn.Module):
    def __init__(self, feature_shape: tuple[int, int, int], image_shape: tuple[int, int, int], *, blocks: int,
                 channels: int, lr: float, seed: int, taper: bool = False) -> None:
        super().__init__()
        # Own seed: building the decoder must not shift the global RNG stream that noise defenses draw from.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.decoder = ResidualDecoder(feature_shape, image_shape, blocks=blocks, channels=channels, taper=taper)
        self.optimizer = torch.optim.Adam(self.decoder.parameters(), lr=lr)
        self._channels_last = False

    def _forward(self, z: torch.Tensor, numerics: Optional[Numerics]) -> torch.Tensor:
        """The decoder under the run's autocast and layout (it is a network like the model's); float32 out."""
        if numerics is None:
            return self.decoder(z)
        if numerics.channels_last and not self._channels_last:  # once, the same on a fresh and a resumed run
            numerics.module(self.decoder)
            self._channels_last = True
        with numerics.autocast():
            return self.decoder(numerics.tensor(z))

    def leakage(self, z: torch.Tensor, x: torch.Tensor, measure: Measure, tau: float,
                numerics: Optional[Numerics] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(penalty before weighting, detached score). ssim: relu(SSIM - tau); mse: -MSE. Grad reaches z only.
        The decoder runs under ``numerics``; the score is computed in float32."""
        self.decoder.requires_grad_(False)
        try:
            x_rec = self._forward(z, numerics)  # (B, C, H, W) in [0, 1]
        finally:
            self.decoder.requires_grad_(True)
        if measure == "ssim":
            score = ssim(x_rec.float(), x.float(), data_range=1.0)  # torchmetrics' SSIM, 40x faster (nets/ssim.py)
            return torch.relu(score - tau), score.detach()
        mse = F.mse_loss(x_rec.float(), x.float())
        return -mse, mse.detach()

    def step(self, z: torch.Tensor, x: torch.Tensor, numerics: Optional[Numerics] = None) -> torch.Tensor:
        """One Adam step of the attacker on (z, x), z detached; returns its MSE (detached)."""
        loss = F.mse_loss(self._forward(z.detach().float(), numerics).float(), x.float())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        parallel.average_gradients(self.decoder.parameters())  # no-op in one process
        self.optimizer.step()
        return loss.detach()

    def pretrain(self, edge: nn.Module, transmit: Callable[[torch.Tensor], torch.Tensor], data: Any,
                 device: torch.device, *, epochs: int, max_steps: int | None, seed: int,
                 numerics: Optional[Numerics] = None) -> None:
        """Fit the decoder to the initial encoder's transmitted features on the training set.

        Uses a copy of the edge in train mode (batch statistics, as in training, without touching the real BN
        running stats) and its own loader generator, so the run's batch order and augmentation are unchanged.
        Under torchrun every rank loads the same global batches and trains on its rows r::N of each.
        """

        if epochs <= 0:
            return
        rank, world = parallel.rank(), parallel.world_size()
        probe = copy.deepcopy(edge).train()
        loader = DataLoader(data.train, batch_size=data.train_loader.batch_size * world, shuffle=True,
                            generator=torch.Generator().manual_seed(seed))
        for epoch in range(epochs):
            total, n = torch.zeros((), device=device), 0
            for i, (images, _) in enumerate(loader):
                if max_steps is not None and i >= max_steps:
                    break
                x = to_unit(images[rank::world].to(device))
                with torch.no_grad():
                    z = transmit(probe(x))
                total = total + self.step(z, x, numerics) * len(x)
                n += len(x)
            log.info("simulated attacker pre-training epoch %d/%d: MSE %.4f", epoch + 1, epochs,
                     float(total) / max(n, 1))

    def get_extra_state(self) -> Any:
        return {"optimizer": self.optimizer.state_dict()}

    def set_extra_state(self, state: Any) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
