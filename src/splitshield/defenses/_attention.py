"""Attention blocks used by SiftFunnel's edge and cloud modules: SE, triplet attention and CBAM.

All map (B, C, H, W) -> (B, C, H, W) by multiplying the input with sigmoid gates.
- SE (Hu et al. 2018): one gate per channel from the global average.
- Triplet attention (Misra et al. 2021): three branches gate the (H, W), (C, W) and (C, H) planes; each branch
  rotates the tensor so that the plane is spatial, Z-pools (max and mean) over the remaining axis, applies a 7x7
  conv + BN + sigmoid, and rotates back; the three results are averaged. No channel reduction, few parameters.
- CBAM (Woo et al. 2018): a channel gate from a shared MLP over average- and max-pooled descriptors, then a
  spatial gate from a 7x7 conv over the channel-wise mean and max.
"""
from __future__ import annotations

import torch
from torch import nn


class SE(nn.Module):
    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True),
                                  nn.Conv2d(hidden, channels, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)  # (B, C, 1, 1) gate


def _zpool(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, 2, H, W): max and mean over dim 1."""
    return torch.cat([x.amax(1, keepdim=True), x.mean(1, keepdim=True)], dim=1)


class _SpatialGate(nn.Module):
    def __init__(self, kernel: int = 7) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(2, 1, kernel, padding=kernel // 2, bias=False), nn.BatchNorm2d(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.conv(_zpool(x)))


class TripletAttention(nn.Module):
    def __init__(self, kernel: int = 7) -> None:
        super().__init__()
        self.hw, self.cw, self.ch = _SpatialGate(kernel), _SpatialGate(kernel), _SpatialGate(kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, C, H, W) -> (B, H, C, W): pool over H, gate the (C, W) plane; permute(0, 2, 1, 3) is its own inverse.
        cw = self.cw(x.permute(0, 2, 1, 3)).permute(0, 2, 1, 3)
        # (B, C, H, W) -> (B, W, H, C): pool over W, gate the (H, C) plane; permute(0, 3, 2, 1) is its own inverse.
        ch = self.ch(x.permute(0, 3, 2, 1)).permute(0, 3, 2, 1)
        return (self.hw(x) + cw + ch) / 3.0


class CBAM(nn.Module):
    def __init__(self, channels: int, reduction: int = 4, kernel: int = 7) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.mlp = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, channels, 1))
        self.spatial = nn.Conv2d(2, 1, kernel, padding=kernel // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.mlp(x.mean((2, 3), keepdim=True)) + self.mlp(x.amax((2, 3), keepdim=True))  # (B, C, 1, 1)
        x = x * torch.sigmoid(gate)
        return x * torch.sigmoid(self.spatial(_zpool(x)))  # (B, 1, H, W) gate
