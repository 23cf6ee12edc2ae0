"""PATROL (Ding et al., WACV 2024): a deeper edge pruned back to the baseline's size, a block-wise local
Lipschitz regulariser, and adversarial reconstruction training.

1. Deeper edge: ``extra_layers`` conv-BN-ReLU blocks (3x3, stride 1, at the edge's last width) are added before
   the bottleneck, so more of the network runs on the device; then every conv of the edge is structurally pruned
   to a common keep ratio chosen so the edge has the parameter count of the unpruned baseline edge (within a few
   per cent; channels are integers). The feature shape and the cloud are unchanged.
2. Local Lipschitz regulariser: ``lipschitz * sum_i k_i`` over the edge blocks, with
   k_i = mean_batch ||f_i(h + d) - f_i(h)|| / ||d||, d ~ N(0, lipschitz_sigma^2 I), h the block's input
   (detached: the estimate is local to the current point and regularises block i's own weights).
3. Adversarial reconstruction: a ResSFL defense composed inside (its simulated decoder attacker trained
   alongside), the encoder penalised by ``-adv_weight * MSE`` (``measure: mse``, the paper's form) or the
   SSIM-threshold term.

Where this differs: PATROL prunes a *trained* deeper edge by a privacy-oriented channel importance and
fine-tunes; the CEM authors' version omits the Lipschitz term and applies 5% Taylor pruning with ResSFL-style
attacker-aware training. Here the width pruning is uniform and happens at construction (same size and compute as
pruning after training; which channels survive is not learned). Supports edges made of conv-BN-ReLU blocks and
max-pools (vgg11_bn); other edges raise a ConfigError.

Example::

    defenses: [{name: patrol, extra_layers: 2, lipschitz: 0.01, adv_weight: 1.0}]
"""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import torch
from torch import nn

from splitshield.defenses._attacker import Measure
from splitshield.defenses.base import DEFENSES, Defense, DefenseEnv, Stage, StackView, StepContext
from splitshield.defenses.ressfl import ResSFL
from splitshield.errors import ConfigError
from splitshield.models.base import Bottleneck, Edge, SplitModel, SplitSpec, conv_bn_relu


def _is_conv_block(m: nn.Module) -> bool:
    return isinstance(m, nn.Sequential) and len(m) == 3 and isinstance(m[0], nn.Conv2d) \
        and isinstance(m[1], nn.BatchNorm2d) and isinstance(m[2], nn.ReLU)


def _plan(edge: Edge, extra_layers: int, keep: float) -> list[tuple[str, int, int, int]]:
    """The pruned deeper edge as (kind, in, out, stride) rows: kind "conv" (conv-BN-ReLU), "pool" or "bottleneck"."""
    modules = list(edge)
    layers, last = modules[1:-1], modules[-1]
    if not isinstance(last, Bottleneck) or not layers or not _is_conv_block(layers[0]):
        raise ConfigError("patrol needs an edge of conv-BN-ReLU blocks ending in the bottleneck (model vgg11_bn); "
                          "list it before other architecture-changing defenses")
    cin = layers[0][0].in_channels
    rows: list[tuple[str, int, int, int]] = []
    for layer in layers:
        if isinstance(layer, nn.MaxPool2d):
            rows.append(("pool", cin, cin, 0))
        elif _is_conv_block(layer):
            cout = max(1, round(layer[0].out_channels * keep))
            rows.append(("conv", cin, cout, layer[0].stride[0]))
            cin = cout
        else:
            raise ConfigError(f"patrol cannot prune edge layer {type(layer).__name__}; supported: vgg11_bn edges")
    for _ in range(extra_layers):
        cout = max(1, round(last.conv.in_channels * keep))
        rows.append(("conv", cin, cout, 1))
        cin = cout
    rows.append(("bottleneck", cin, last.conv.out_channels, 1))
    return rows


def _plan_params(rows: list[tuple[str, int, int, int]]) -> int:
    # conv-BN-ReLU: 3x3 conv without bias + BN weight and bias; bottleneck: 3x3 conv with bias.
    return sum(9 * i * o + 2 * o if kind == "conv" else 9 * i * o + o if kind == "bottleneck" else 0
               for kind, i, o, _ in rows)


def deeper_edge(edge: Edge, extra_layers: int, keep: float) -> Edge:
    """The edge with ``extra_layers`` more conv blocks and every conv width scaled by ``keep``."""
    pools = iter([m for m in edge if isinstance(m, nn.MaxPool2d)])
    out: list[nn.Module] = [copy.deepcopy(edge[0])]  # Normalize stays first, so Edge.blocks() still works
    for kind, cin, cout, stride in _plan(edge, extra_layers, keep):
        if kind == "pool":
            out.append(copy.deepcopy(next(pools)))
        elif kind == "conv":
            out.append(conv_bn_relu(cin, cout, stride=stride))
        else:
            out.append(Bottleneck(cin, cout))
    return Edge(*out)


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def pruned_keep_ratio(edge: Edge, extra_layers: int) -> float:
    """The keep ratio (grid of 0.005) whose pruned deeper edge is closest in parameter count to ``edge``."""
    target = n_params(edge)
    keeps = [i / 1000 for i in range(1000, 45, -5)]
    return min(keeps, key=lambda k: abs(_plan_params(_plan(edge, extra_layers, k)) - target))


@contextlib.contextmanager
def frozen_bn_stats(module: nn.Module) -> Iterator[None]:
    """Forward in train mode (batch statistics) without moving BN running stats: momentum 0 for the duration."""
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone()) for m in bns]
    for m in bns:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, tracked) in zip(bns, saved):
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)


@DEFENSES.register("patrol")
class Patrol(Defense):
    stage = Stage.ARCHITECTURE
    @dataclass
    class Config:
        extra_layers: int = 2  # conv blocks added to the edge before pruning
        match_params: bool = True  # prune the deeper edge back to the baseline edge's parameter count
        lipschitz: float = 0.01  # weight of sum_i k_i over the edge blocks
        lipschitz_sigma: float = 0.01  # std of the Gaussian input perturbation used to estimate k_i
        adv_weight: float = 1.0  # weight of the adversarial reconstruction term
        measure: Measure = "mse"  # mse: -adv_weight * MSE; ssim: adv_weight * relu(SSIM - tau)
        tau: float = 0.5
        pretrain_epochs: int = 1  # simulated attacker pre-training on the initial encoder
        pretrain_max_steps: Optional[int] = None
        lr: float = 1e-3
        blocks: int = 4
        channels: int = 64
        taper: bool = False

        def check(self, path: str) -> None:
            if self.extra_layers < 0:
                raise ConfigError(f"{path}.extra_layers: must be >= 0, got {self.extra_layers}")
            if self.lipschitz < 0 or self.adv_weight < 0 or self.lipschitz_sigma <= 0:
                raise ConfigError(f"{path}: lipschitz and adv_weight must be >= 0 and lipschitz_sigma positive")

    def __init__(self, cfg: Any, env: DefenseEnv) -> None:
        super().__init__(cfg, env)
        # The adversarial term is ResSFL's attacker-aware training, composed (PATROL keeps the feature shape).
        self.adversary: Optional[ResSFL] = None
        if cfg.adv_weight > 0:
            self.adversary = ResSFL(ResSFL.Config(alpha=cfg.adv_weight, measure=cfg.measure, tau=cfg.tau,
                                                  pretrain_epochs=cfg.pretrain_epochs,
                                                  pretrain_max_steps=cfg.pretrain_max_steps, lr=cfg.lr,
                                                  blocks=cfg.blocks, channels=cfg.channels, taper=cfg.taper),
                                  env, seed_offset=202)

    @property
    def needs_blocks(self) -> bool:  # type: ignore[override]
        return self.cfg.lipschitz > 0

    @classmethod
    def identity_config(cls) -> "Patrol.Config":
        return cls.Config(extra_layers=0, lipschitz=0.0, adv_weight=0.0, pretrain_epochs=0)

    def is_identity(self) -> bool:
        return self.cfg.extra_layers == 0 and self.cfg.lipschitz == 0 and self.cfg.adv_weight == 0


    def adapt_model(self, model: SplitModel) -> SplitModel:
        if self.cfg.extra_layers > 0:
            keep = pruned_keep_ratio(model.edge, self.cfg.extra_layers) if self.cfg.match_params else 1.0
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.env.seed + 201)
                edge = deeper_edge(model.edge, self.cfg.extra_layers, keep)
            spec = SplitSpec(model.spec.input_shape, tuple(model.spec.feature_shape), model.spec.num_classes)
            model = SplitModel(edge, model.cloud, spec)
        return model

    def bind(self, view: StackView) -> None:
        super().bind(view)
        if self.adversary is not None:
            self.adversary.bind(view)

    def setup(self, model: SplitModel, data: Any, device: torch.device) -> None:
        if self.adversary is not None:
            self.adversary.setup(model, data, device)

    def _lipschitz(self, ctx: StepContext) -> torch.Tensor:
        edge, blocks = ctx.model.edge, ctx.blocks
        assert blocks is not None  # needs_blocks is true whenever lipschitz > 0
        inputs = [edge[0](ctx.x)] + list(blocks[:-1])  # input of block i (edge[i + 1]); edge[0] is Normalize
        total = ctx.x.new_zeros(())
        with frozen_bn_stats(edge):
            for i, h in enumerate(inputs):
                h = h.detach()
                delta = self.cfg.lipschitz_sigma * torch.randn_like(h)
                # Clean and perturbed inputs in one (2B, ...) pass: the gradient reaches block i's weights only.
                clean, moved = edge[i + 1](torch.cat([h, h + delta])).chunk(2)
                change = (moved - clean).flatten(1).norm(dim=1)  # (B,)
                total = total + (change / delta.flatten(1).norm(dim=1)).mean()
        return total

    def penalty(self, ctx: StepContext) -> Optional[torch.Tensor]:
        terms = []
        if self.cfg.lipschitz > 0:
            k = self._lipschitz(ctx)
            ctx.logs["patrol/lipschitz"] = k.detach()
            terms.append(self.cfg.lipschitz * k)
        if self.adversary is not None:
            term = self.adversary.penalty(ctx)  # logs ressfl/<measure>
            if term is not None:
                terms.append(term)
        return sum(terms[1:], terms[0]) if terms else None

    def update(self, ctx: StepContext) -> None:
        if self.adversary is not None:
            self.adversary.update(ctx)  # logs ressfl/attacker_mse
