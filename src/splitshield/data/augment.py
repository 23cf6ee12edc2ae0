"""Batched, seeded augmentation on [0,1] image tensors: random crop with zero padding, horizontal flip, rotation.

Done per batch on the training device instead of per image in the data loader: the tensor form is one gather and
one grid_sample per batch (a large speed-up on 2-core CPUs), and drawing from the loader's own generator keeps
batch order and augmentation independent of any randomness a defense consumes.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


class BatchAugment:
    def __init__(self, *, crop_padding: int = 0, hflip: bool = False, rotation: float = 0.0,
                 generator: torch.Generator) -> None:
        self.crop_padding = crop_padding
        self.hflip = hflip
        self.rotation = rotation
        self.generator = generator

    @property
    def active(self) -> bool:
        return bool(self.crop_padding or self.hflip or self.rotation)

    def _rand(self, n: int) -> torch.Tensor:
        return torch.rand(n, generator=self.generator)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) in [0, 1] on any device; random numbers come from the CPU generator."""
        if not self.active:
            return x
        b, _, h, w = x.shape
        # Every random number of the batch, drawn on the CPU in a fixed order (the stream a checkpoint restores),
        # then moved in one copy: on a GPU one non-blocking transfer per batch instead of one per kind.
        draws = []
        if self.crop_padding:
            draws += [self._rand(b), self._rand(b)]
        if self.hflip:
            draws.append(self._rand(b))
        if self.rotation:
            draws.append(self._rand(b))
        numbers = torch.stack(draws)
        if x.device.type == "cuda":
            numbers = numbers.pin_memory().to(x.device, non_blocking=True)
        else:
            numbers = numbers.to(x.device)
        k = 0
        if self.crop_padding:
            p = self.crop_padding
            padded = F.pad(x, (p, p, p, p))
            dy = (numbers[0] * (2 * p + 1)).long().clamp_max(2 * p)
            dx = (numbers[1] * (2 * p + 1)).long().clamp_max(2 * p)
            k = 2
            rows = (dy[:, None] + torch.arange(h, device=x.device)[None])  # (B, H)
            cols = (dx[:, None] + torch.arange(w, device=x.device)[None])  # (B, W)
            idx_b = torch.arange(b, device=x.device)[:, None, None]
            x = padded.permute(0, 2, 3, 1)[idx_b, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
        if self.hflip:
            flip = numbers[k] < 0.5
            k += 1
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        if self.rotation:
            angle = (numbers[k] * 2 - 1) * math.radians(self.rotation)
            cos, sin = angle.cos(), angle.sin()
            zero = torch.zeros_like(angle)
            theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1).to(x)
            grid = F.affine_grid(theta, list(x.shape), align_corners=False)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return x.contiguous()
