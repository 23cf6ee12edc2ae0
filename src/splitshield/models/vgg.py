"""VGG11-BN split after conv c1..c4 (a max-pool that follows the cut conv stays on the edge).

With 32x32 input and cut=2 the edge is conv-pool-conv-pool and the 8-channel bottleneck gives 8x8x8 = 512-dim
features, the cut the CEM authors' script uses; 48x48 FaceScrub gives 8x12x12. Pools use ceil_mode and the head
pools adaptively, so 28/32/48/64 px inputs all work.
"""
from __future__ import annotations

from torch import nn

from splitshield.config import ModelConfig
from splitshield.data.base import DatasetInfo
from splitshield.errors import ConfigError
from splitshield.models.base import (MODELS, Bottleneck, Edge, Normalize, SplitModel, SplitSpec, conv_bn_relu,
                                     infer_feature_shape, scaled)

VGG11 = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


def _layers(plan: tuple, cin: int, width: float) -> tuple[list[nn.Module], int]:
    layers: list[nn.Module] = []
    for item in plan:
        if item == "M":
            layers.append(nn.MaxPool2d(2, ceil_mode=True))
        else:
            cout = scaled(int(item), width)
            layers.append(conv_bn_relu(cin, cout))
            cin = cout
    return layers, cin


@MODELS.register("vgg11_bn")
def vgg11_bn(cfg: ModelConfig, info: DatasetInfo) -> SplitModel:
    convs = [i for i, item in enumerate(VGG11) if item != "M"]
    if not 1 <= cfg.cut <= 4:
        raise ConfigError(f"model.cut={cfg.cut} is not valid for vgg11_bn; valid: 1, 2, 3, 4 (conv c1..c4)")
    end = convs[cfg.cut - 1] + 1
    if end < len(VGG11) and VGG11[end] == "M":
        end += 1
    # Construction order = initialisation order (the global RNG): edge, bottleneck, cloud layers, its first conv,
    # the head, as it always was, so a seed gives the same model as before the plain cut existed.
    edge_layers, edge_channels = _layers(VGG11[:end], info.channels, cfg.width)
    plain = cfg.bottleneck_channels is None  # the plain cut: the cut layer's output is what leaves the device
    bottleneck = [] if plain else [Bottleneck(edge_channels, cfg.bottleneck_channels)]  # type: ignore[arg-type]
    edge = Edge(Normalize(info.mean, info.std), *edge_layers, *bottleneck)
    cloud_layers, cloud_channels = _layers(VGG11[end:], edge_channels, cfg.width)
    up = [] if plain else [conv_bn_relu(cfg.bottleneck_channels, edge_channels)]  # type: ignore[arg-type]
    cloud = nn.Sequential(*up, *cloud_layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(cloud_channels, info.num_classes))
    spec = SplitSpec(info.input_shape, infer_feature_shape(edge, info.input_shape), info.num_classes)
    return SplitModel(edge, cloud, spec)
