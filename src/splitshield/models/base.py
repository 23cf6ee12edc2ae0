"""Split models: an explicit edge/cloud seam, ``edge(x) -> z_hat`` on the device and ``cloud(z) -> logits``.

The edge starts with the input normalisation (so every attack reconstructs raw [0,1] pixels) and ends with the
paper's bottleneck: a conv down to a few channels followed by a sigmoid, so z_hat lies in [0,1]. The cloud starts
with a conv back up. Defenses sit between the two (see defenses/), on what actually leaves the device.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from splitshield.config import ModelConfig
from splitshield.data.base import DatasetInfo
from splitshield.registry import Registry


class Normalize(nn.Module):
    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def full(x: torch.Tensor) -> torch.Tensor:
    """float32 for a reduced-precision (autocast) tensor; float32/float64 tensors as they are."""
    return x.float() if x.dtype in (torch.bfloat16, torch.float16) else x


class Bottleneck(nn.Module):
    """Conv to ``channels`` (no ReLU) then a sigmoid: the transmitted feature z_hat in [0, 1]."""

    def __init__(self, in_channels: int, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(full(self.conv(x)))


class Edge(nn.Sequential):
    """Normalize, then blocks, then the bottleneck. ``blocks(x)`` returns every block output (for BiDO, PATROL).

    The last output (what the defenses transform and the device sends) is always float32, also when the edge runs
    under bfloat16/float16 autocast in training: noise, CEM's statistics and the wire format work on full-precision
    features, as deployed."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return full(super().forward(x))

    def blocks(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs = []
        for i, module in enumerate(self):
            x = module(x)
            if i > 0:  # skip the normalisation
                outputs.append(x)
        outputs[-1] = full(outputs[-1])
        return outputs


@dataclass(frozen=True)
class SplitSpec:
    input_shape: tuple[int, int, int]
    feature_shape: tuple[int, int, int]
    num_classes: int


class SplitModel(nn.Module):
    def __init__(self, edge: Edge, cloud: nn.Module, spec: SplitSpec) -> None:
        super().__init__()
        self.edge = edge
        self.cloud = cloud
        self.spec = spec

    @property
    def feature_shape(self) -> tuple[int, int, int]:
        """Shape (C, H, W) of one transmitted feature."""
        return self.spec.feature_shape

    @property
    def feature_dim(self) -> int:
        c, h, w = self.spec.feature_shape
        return c * h * w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cloud(self.edge(x))


def infer_feature_shape(edge: nn.Module, input_shape: tuple[int, int, int]) -> tuple[int, int, int]:
    was_training = edge.training
    edge.eval()
    with torch.no_grad():
        out = edge(torch.zeros(1, *input_shape))
    edge.train(was_training)
    return tuple(out.shape[1:])  # type: ignore[return-value]


ModelBuilder = Callable[[ModelConfig, DatasetInfo], SplitModel]
MODELS: Registry[ModelBuilder] = Registry("model")


def build_model(cfg: ModelConfig, info: DatasetInfo) -> SplitModel:
    return MODELS.get(cfg.name)(cfg, info)


def scaled(channels: int, width: float) -> int:
    return max(8, int(round(channels * width)))


def conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))
