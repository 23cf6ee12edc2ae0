"""ResNet-20 (3 stages x 3 basic blocks, 16/32/64 channels) split after its first ``cut`` convs.

``cut`` counts convolutions from the input and must end on a block boundary: 1 (stem), 3, 5, ..., 19. Inputs of
64 px and more get a stride-2 stem and a max-pool (the usual TinyImageNet adaptation), so cut=3 on 64x64 gives
8x16x16 = 2048-dim features as in the paper. The paper says "first four convolution layers"; a cut inside a
residual block would break its skip connection, so we cut at the nearest block end and state it in the preset.
"""
from __future__ import annotations

import torch
from torch import nn

from splitshield.config import ModelConfig
from splitshield.data.base import DatasetInfo
from splitshield.errors import ConfigError
from splitshield.models.base import (MODELS, Bottleneck, Edge, Normalize, SplitModel, SplitSpec, conv_bn_relu,
                                     infer_feature_shape, scaled)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


@MODELS.register("resnet20")
def resnet20(cfg: ModelConfig, info: DatasetInfo) -> SplitModel:
    if cfg.cut < 1 or cfg.cut > 19 or cfg.cut % 2 == 0:
        raise ConfigError(f"model.cut={cfg.cut} is not valid for resnet20; valid: 1, 3, 5, ..., 19 (block ends)")
    widths = [scaled(c, cfg.width) for c in (16, 32, 64)]
    large = info.size >= 64
    stem: list[nn.Module] = [conv_bn_relu(info.channels, widths[0], stride=2 if large else 1)]
    if large:
        stem.append(nn.MaxPool2d(2))
    blocks: list[nn.Module] = [nn.Sequential(*stem)]
    cin = widths[0]
    for stage, cout in enumerate(widths):
        for b in range(3):
            blocks.append(BasicBlock(cin, cout, stride=2 if stage > 0 and b == 0 else 1))
            cin = cout
    n_edge = 1 + (cfg.cut - 1) // 2
    edge_channels = [widths[0]] + [widths[i // 3] for i in range(9)]
    plain = cfg.bottleneck_channels is None  # the plain cut
    bottleneck = [] if plain else [Bottleneck(edge_channels[n_edge - 1], cfg.bottleneck_channels)]  # type: ignore
    edge = Edge(Normalize(info.mean, info.std), *blocks[:n_edge], *bottleneck)
    up = [] if plain else [conv_bn_relu(cfg.bottleneck_channels, edge_channels[n_edge - 1])]  # type: ignore[arg-type]
    cloud = nn.Sequential(*up, *blocks[n_edge:], nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(widths[-1], info.num_classes))
    spec = SplitSpec(info.input_shape, infer_feature_shape(edge, info.input_shape), info.num_classes)
    return SplitModel(edge, cloud, spec)
