"""The residual inversion decoder of the ResSFL/CEM papers ("res_normN{blocks}C{channels}").

Maps a transmitted feature (C, h, w) back to an image (C_in, H, W) in [0, 1]: a stem to ``channels`` at the
feature's spatial size, ``blocks`` residual blocks at that width, transposed convs (stride 2) until the spatial
size reaches the image size, then a 3x3 conv and a sigmoid. With 8 blocks at 64 channels and the conv stem it has
~0.7M parameters, as in the papers. Used by the decoder/GAN attacks and by attacker-aware training (ResSFL).

``taper`` halves the channels at each upsampling stage (the papers keep them): most of the decoder's compute is
spent at the high resolutions. Stems: ``conv`` (the papers': a 3x3 conv, local) or ``dense`` (a linear map from the
whole flattened feature to every position of the first map, then BN + ReLU), which lets every output pixel draw on
every feature coordinate from the first layer on. Measured on the quick-fmnist noise victim it was not stronger
than the conv stem, which stays the default (docs/attacks.md).
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


class DenseStem(nn.Module):
    """(B, C, h, w) -> (B, channels, h, w) through one linear map of the flattened feature."""

    def __init__(self, feature_shape: tuple[int, int, int], channels: int) -> None:
        super().__init__()
        c, h, w = feature_shape
        self.shape = (channels, h, w)
        self.linear = nn.Linear(c * h * w, channels * h * w)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.linear(z.flatten(1)).view(-1, *self.shape)


class ResidualDecoder(nn.Module):
    def __init__(self, feature_shape: tuple[int, int, int], image_shape: tuple[int, int, int], *,
                 blocks: int = 8, channels: int = 64, stem: str = "conv", taper: bool = False) -> None:
        super().__init__()
        c, h, _ = feature_shape
        out_c, out_h, out_w = image_shape
        self.image_shape = image_shape
        if stem not in ("conv", "dense"):
            raise ValueError(f"unknown decoder stem {stem!r}; valid: conv, dense")
        first = nn.Conv2d(c, channels, 3, padding=1) if stem == "conv" else DenseStem(feature_shape, channels)
        layers: list[nn.Module] = [first, nn.BatchNorm2d(channels), nn.ReLU(True)]
        layers += [ResBlock(channels) for _ in range(blocks)]
        ups = max(0, math.ceil(math.log2(out_h / h))) if h < out_h else 0
        width = channels
        for _ in range(ups):  # taper: halve the width at each doubling of the resolution (most of the cost is there)
            nxt = max(8, width // 2) if taper else width
            layers += [nn.ConvTranspose2d(width, nxt, 3, stride=2, padding=1, output_padding=1),
                       nn.BatchNorm2d(nxt), nn.ReLU(True)]
            width = nxt
        layers.append(nn.Conv2d(width, out_c, 3, padding=1))
        self.body = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.body(z)
        if x.shape[-2:] != self.image_shape[1:]:
            # e.g. 7 -> 28 needs exactly x4, but 12 -> 48 or 8 -> 32 too; odd ratios (7x7 from 28 with ceil
            # pooling) land within a pixel, so resize the last bit instead of cropping information away.
            x = F.interpolate(x, size=self.image_shape[1:], mode="bilinear", align_corners=False)
        return torch.sigmoid(x.float())  # float32 out, also under autocast: the MSE is taken on it
