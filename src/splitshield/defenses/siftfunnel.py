"""SiftFunnel (Liu, arXiv 2501.00824): a funnel-shaped attention edge, a cloud-side up module, and a four-term
loss that strips redundant information from the transmitted feature.

Architecture (``funnel: true``): the edge's bottleneck is replaced by a funnel on the same backbone,
conv3x3 + SE + triplet attention at the backbone width c, 1x1 convs narrowing c -> c/2 -> c/4, a 3x3 and a 5x5
conv down to ``channels`` (4 for VGG-16 in the paper, 6 for ResNet-18, 12 for the small CNN), SE and CBAM, then
the sigmoid that every edge here ends with (z in [0, 1], so noise and CEM compose as with the other defenses).
The cloud gets an "up" module first (two 3x3 conv-BN-ReLU re-expanding to the original bottleneck width, then
triplet attention), followed by the original cloud.

Loss: kl_weight * KL(q || softmax(logits)), q the label-smoothed target (``true_class_mass`` on the true class,
the rest spread evenly), plus on the transmitted z (the paper's intent; the authors' default option regularises
the layer before the funnel): dcor_weight * dCor^2(x, z) + l1_weight * mean|z| + corr_weight * mean over samples
and channel pairs i != j of Pearson(z_i, z_j)^2 (correlation over the h*w positions of one sample).
The paper trains with Adam (lr 0.01, betas (0.5, 0.999), amsgrad, weight decay 1e-3): configs/defenses/
siftfunnel.yaml sets that in ``train``.

Example::

    defenses: [{name: siftfunnel, channels: 4}]
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from splitshield.defenses._attention import CBAM, SE, TripletAttention
from splitshield.defenses._dependence import distance_correlation_sq
from splitshield.defenses.base import DEFENSES, Defense, Stage, StepContext
from splitshield.errors import ConfigError
from splitshield.models.base import Bottleneck, Edge, SplitModel, SplitSpec, conv_bn_relu


def _conv_bn_relu(cin: int, cout: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class Funnel(nn.Module):
    """(B, c, h, w) backbone output -> (B, channels, h, w) transmitted feature in [0, 1]."""

    def __init__(self, cin: int, channels: int) -> None:
        super().__init__()
        half, quarter = max(channels, cin // 2), max(channels, cin // 4)
        self.body = nn.Sequential(
            conv_bn_relu(cin, cin), SE(cin), TripletAttention(),
            _conv_bn_relu(cin, half, 1), _conv_bn_relu(half, quarter, 1),
            _conv_bn_relu(quarter, quarter, 3), nn.Conv2d(quarter, channels, 5, padding=2),
            SE(channels, reduction=1), CBAM(channels, reduction=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.body(x))


class Up(nn.Module):
    """Cloud-side (B, channels, h, w) -> (B, width, h, w): re-expand channels, then triplet attention."""

    def __init__(self, channels: int, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_bn_relu(channels, width), conv_bn_relu(width, width), TripletAttention())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.body(z)


def channel_correlation_sq(z: torch.Tensor) -> torch.Tensor:
    """Mean over samples and channel pairs i != j of Pearson(z_i, z_j)^2, z (B, C, H, W); 0 when C == 1."""
    b, c = z.shape[:2]
    if c < 2:
        return z.new_zeros(())
    flat = z.reshape(b, c, -1)
    flat = flat - flat.mean(-1, keepdim=True)
    unit = flat / (flat.norm(dim=-1, keepdim=True) + 1e-8)
    corr = unit @ unit.transpose(1, 2)  # (B, C, C)
    off = ~torch.eye(c, dtype=torch.bool, device=z.device)
    return corr[:, off].pow(2).mean()


@DEFENSES.register("siftfunnel")
class SiftFunnel(Defense):
    stage = Stage.ARCHITECTURE
    @dataclass
    class Config:
        funnel: bool = True  # replace the bottleneck by the funnel edge and add the cloud's up module
        channels: int = 4  # channels of the transmitted feature (paper: 4 VGG-16, 6 ResNet-18, 12 small CNN)
        kl_weight: float = 5.0
        true_class_mass: float = 0.75  # label smoothing: probability put on the true class
        dcor_weight: float = 2.0  # weight of dCor^2(x, z)
        l1_weight: float = 0.03  # weight of mean |z|
        corr_weight: float = 2.0  # weight of the mean squared channel-to-channel Pearson correlation

        def check(self, path: str) -> None:
            if self.channels <= 0:
                raise ConfigError(f"{path}.channels: must be positive, got {self.channels}")
            if not 0 < self.true_class_mass <= 1:
                raise ConfigError(f"{path}.true_class_mass: must be in (0, 1], got {self.true_class_mass}")
            if min(self.kl_weight, self.dcor_weight, self.l1_weight, self.corr_weight) < 0 or self.kl_weight == 0:
                raise ConfigError(f"{path}: loss weights must be >= 0 and kl_weight positive")

    @classmethod
    def identity_config(cls) -> "SiftFunnel.Config":
        return cls.Config(funnel=False, kl_weight=1.0, true_class_mass=1.0, dcor_weight=0.0, l1_weight=0.0,
                          corr_weight=0.0)

    def is_identity(self) -> bool:
        c = self.cfg
        return not c.funnel and c.kl_weight == 1 and c.true_class_mass == 1 and \
            c.dcor_weight == c.l1_weight == c.corr_weight == 0

    def adapt_model(self, model: SplitModel) -> SplitModel:
        if not self.cfg.funnel:
            return model
        last = model.edge[-1]
        if not isinstance(last, Bottleneck):
            raise ConfigError("siftfunnel replaces the edge's bottleneck but this edge ends in "
                              f"{type(last).__name__}; list siftfunnel before other architecture-changing defenses")
        edge = Edge(*list(model.edge)[:-1], Funnel(last.conv.in_channels, self.cfg.channels))
        cloud = nn.Sequential(Up(self.cfg.channels, last.conv.out_channels), model.cloud)
        _, h, w = model.feature_shape  # all funnel convs keep the spatial size
        return SplitModel(edge, cloud, SplitSpec(model.spec.input_shape, (self.cfg.channels, h, w),
                                                 model.spec.num_classes))

    def task_loss(self, logits: torch.Tensor, y: torch.Tensor) -> Optional[torch.Tensor]:
        if self.cfg.true_class_mass == 1 and self.cfg.kl_weight == 1:
            return None  # plain cross-entropy, left to the stack
        n = logits.shape[1]
        rest = (1 - self.cfg.true_class_mass) / max(n - 1, 1)
        q = torch.full_like(logits, rest, dtype=torch.float32)
        q.scatter_(1, y[:, None], self.cfg.true_class_mass)  # (B, n) smoothed target
        return self.cfg.kl_weight * F.kl_div(logits.float().log_softmax(1), q, reduction="batchmean")

    def penalty(self, ctx: StepContext) -> Optional[torch.Tensor]:
        c = self.cfg
        if c.dcor_weight == c.l1_weight == c.corr_weight == 0:
            return None
        dcor2 = distance_correlation_sq(ctx.x, ctx.z)
        l1 = ctx.z.abs().mean()
        corr = channel_correlation_sq(ctx.z)
        ctx.logs["siftfunnel/dcor2"] = dcor2.detach()
        ctx.logs["siftfunnel/channel_corr2"] = corr.detach()
        return c.dcor_weight * dcor2 + c.l1_weight * l1 + c.corr_weight * corr
