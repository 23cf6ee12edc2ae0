"""The paper's bottleneck as a defense: force the width of the transmitted feature to ``channels``.

By default every model ends its edge with a bottleneck (conv to ``model.bottleneck_channels``, then a sigmoid) and
starts its cloud with a conv back up; that is the baseline all defenses share (CEM paper, Sec. 4.1). This component
sets the bottleneck's width explicitly: on a model built without one (``model.bottleneck_channels: null``, the
paper's No_defense) it adds one; on a model with one it rebuilds the bottleneck conv with ``channels`` outputs and
the cloud's first conv with ``channels`` inputs (fresh weights). ``channels: null`` keeps the model as it is (the
identity setting); so does a value equal to the model's current bottleneck width (no weights are touched).

Example::

    defenses: [{name: bottleneck, channels: 8}]
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from torch import nn

from splitshield.defenses.base import DEFENSES, Defense, Stage
from splitshield.errors import ConfigError
from splitshield.models.base import Bottleneck, Edge, SplitModel, SplitSpec, conv_bn_relu


def add_bottleneck(model: SplitModel, channels: int) -> SplitModel:
    """The plain cut plus the paper's bottleneck: a ``channels``-wide conv + sigmoid on the edge, a conv back up to
    the cut's width first on the cloud."""
    c, h, w = model.spec.feature_shape
    edge = Edge(*list(model.edge), Bottleneck(c, channels))
    cloud = nn.Sequential(conv_bn_relu(channels, c), *list(model.cloud))
    return SplitModel(edge, cloud, SplitSpec(model.spec.input_shape, (channels, h, w), model.spec.num_classes))


def replace_bottleneck(model: SplitModel, channels: int) -> SplitModel:
    """A model whose edge ends in a ``channels``-wide bottleneck and whose cloud's first conv reads it."""
    old = model.edge[-1]
    if not isinstance(old, Bottleneck):
        return add_bottleneck(model, channels)
    first = next((m for m in model.cloud.modules() if isinstance(m, nn.Conv2d)), None)
    if first is None or first.in_channels != old.conv.out_channels:
        raise ConfigError("the cloud does not start with a conv reading the bottleneck; 'bottleneck' needs a model "
                          "built by splitshield.models (vgg11_bn, resnet20)")
    edge = Edge(*list(model.edge)[:-1], Bottleneck(old.conv.in_channels, channels))
    new_first = nn.Conv2d(channels, first.out_channels, first.kernel_size, first.stride, first.padding,
                          bias=first.bias is not None)
    _swap_module(model.cloud, first, new_first)
    _, h, w = model.spec.feature_shape  # a 3x3 conv with padding 1 keeps the spatial size
    return SplitModel(edge, model.cloud, SplitSpec(model.spec.input_shape, (channels, h, w), model.spec.num_classes))


def _swap_module(root: nn.Module, old: nn.Module, new: nn.Module) -> None:
    for parent in root.modules():
        for name, child in parent.named_children():
            if child is old:
                setattr(parent, name, new)
                return


@DEFENSES.register("bottleneck")
class BottleneckDefense(Defense):
    stage = Stage.ARCHITECTURE
    @dataclass
    class Config:
        channels: Optional[int] = 8  # width of the transmitted feature; null keeps the model's bottleneck

        def check(self, path: str) -> None:
            if self.channels is not None and self.channels <= 0:
                raise ConfigError(f"{path}.channels: must be positive (or null to keep the model's), "
                                  f"got {self.channels}")

    @classmethod
    def identity_config(cls) -> "BottleneckDefense.Config":
        return cls.Config(channels=None)

    def is_identity(self) -> bool:
        return self.cfg.channels is None

    def adapt_model(self, model: SplitModel) -> SplitModel:
        has = isinstance(model.edge[-1], Bottleneck)
        if self.cfg.channels is None or (has and self.cfg.channels == model.feature_shape[0]):
            return model
        return replace_bottleneck(model, self.cfg.channels)
