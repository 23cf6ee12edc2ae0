"""Parameter counts, MACs (FlopCounterMode FLOPs / 2) and latency of the edge and cloud."""
from __future__ import annotations

import math

import torch
from torch import nn

from splitshield.config import load_config
from splitshield.data.loaders import make_source
from splitshield.evaluation.efficiency import count_macs, count_parameters, measure_latency, split_efficiency
from splitshield.models import build_model


def test_macs_of_conv_and_linear_match_the_formula() -> None:
    conv = nn.Conv2d(3, 5, 3, padding=1)
    assert count_macs(conv, torch.zeros(2, 3, 8, 8)) == 3 * 5 * 9 * 8 * 8  # per image, bias not counted
    strided = nn.Conv2d(4, 6, 3, stride=2, padding=1)
    assert count_macs(strided, torch.zeros(1, 4, 9, 9)) == 4 * 6 * 9 * 5 * 5
    assert count_macs(nn.Linear(10, 7), torch.zeros(3, 10)) == 70
    assert count_parameters(conv) == 3 * 5 * 9 + 5


def test_split_efficiency_of_quick_fmnist_vgg() -> None:
    cfg = load_config({"data": {"name": "fashion-mnist"}, "model": {"width": 0.25, "cut": 2}})
    info = make_source(cfg.data).dataset_info()
    model = build_model(cfg.model, info)
    eff = split_efficiency(model)
    assert eff.edge_params + eff.cloud_params == count_parameters(model)
    # Edge: conv 1->16 at 28x28, pool, conv 16->32 at 14x14, pool, bottleneck 32->8 at 7x7 (3x3 kernels).
    assert eff.edge_macs == 9 * (1 * 16 * 28 * 28 + 16 * 32 * 14 * 14 + 32 * 8 * 7 * 7)
    assert 0 < eff.edge_share < 0.5  # the device runs the cheap part
    assert model.training  # measuring does not switch the model to eval behind the caller's back


def test_latency_is_positive_and_finite() -> None:
    ms = measure_latency(lambda: torch.ones(64, 64) @ torch.ones(64, 64), warmup=1, repeats=3)
    assert ms > 0 and math.isfinite(ms)
    cfg = load_config({"data": {"name": "synthetic"}, "model": {"width": 0.125}})
    eff = split_efficiency(build_model(cfg.model, make_source(cfg.data).dataset_info()), batch_size=4, latency=True)
    assert eff.edge_ms > 0 and eff.to_dict()["edge_share"] == eff.edge_share
