"""The residual inversion decoder of the ResSFL/CEM papers ("res_normN{blocks}C{channels}").

Maps a transmitted feature (C, h, w) back to an image (C_in, H, W) in [0, 1]: a 3x3 conv to ``channels``,
``blocks`` residual blocks at that width, transposed convs (stride 2) until the spatial size reaches the image
size, then a 3x3 conv and a sigmoid. With 8 blocks at 64 channels it has ~0.7M parameters, as in the papers.
Used by the decoder/GAN attacks (8 blocks) and by attacker-aware training (ResSFL, 4 blocks).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class ResBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.body(x))


class ResidualDecoder(nn.Module):
    def __init__(self, feature_shape: tuple[int, int, int], image_shape: tuple[int, int, int], *,
                 blocks: int = 8, channels: int = 64) -> None:
        super().__init__()
        c, h, _ = feature_shape
        out_c, out_h, out_w = image_shape
        self.image_shape = image_shape
        layers: list[nn.Module] = [nn.Conv2d(c, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU(True)]
        layers += [ResBlock(channels) for _ in range(blocks)]
        ups = max(0, math.ceil(math.log2(out_h / h))) if h < out_h else 0
        for _ in range(ups):
            layers += [nn.ConvTranspose2d(channels, channels, 3, stride=2, padding=1, output_padding=1),
                       nn.BatchNorm2d(channels), nn.ReLU(True)]
        layers.append(nn.Conv2d(channels, out_c, 3, padding=1))
        self.body = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.body(z)
        if x.shape[-2:] != self.image_shape[1:]:
            # e.g. 7 -> 28 needs exactly x4, but 12 -> 48 or 8 -> 32 too; odd ratios (7x7 from 28 with ceil
            # pooling) land within a pixel, so resize the last bit instead of cropping information away.
            x = F.interpolate(x, size=self.image_shape[1:], mode="bilinear", align_corners=False)
        return torch.sigmoid(x)
