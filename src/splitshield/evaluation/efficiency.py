"""Edge/cloud cost of a split model: parameter counts, multiply-accumulates and wall-clock latency.

MACs come from ``torch.utils.flop_counter.FlopCounterMode`` (FLOPs of convolutions, matmuls and linear layers,
each multiply-add counted as 2 FLOPs), so MACs = FLOPs / 2 for one input; element-wise ops (BN, ReLU, sigmoid,
pooling, attention gates' products) are not counted, as in the MAC tables of the CEM paper. Defense transforms
on z (noise, dropout, top-k) are element-wise and cost no MACs.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@torch.no_grad()
def count_macs(module: nn.Module, example: torch.Tensor) -> int:
    """MACs of one forward pass of ``module`` on ``example`` divided by its batch size."""
    was = module.training
    module.eval()
    counter = FlopCounterMode(display=False)
    with counter:
        module(example)
    module.train(was)
    return counter.get_total_flops() // 2 // example.shape[0]


@torch.no_grad()
def measure_latency(fn: Callable[[], Any], *, warmup: int = 3, repeats: int = 20) -> float:
    """Median wall-clock milliseconds of ``fn()`` (synchronising CUDA so the time covers the kernels)."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


@dataclass
class Efficiency:
    edge_params: int
    cloud_params: int
    edge_macs: int  # per image
    cloud_macs: int
    edge_ms: float  # median latency of one batch through the edge, NaN if not measured
    batch_size: int
    cloud_ms: float = float("nan")  # median latency of one batch through the cloud, NaN if not measured

    @property
    def edge_share(self) -> float:
        """Fraction of the model's MACs that run on the device."""
        return self.edge_macs / max(self.edge_macs + self.cloud_macs, 1)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "edge_share": self.edge_share}


def split_efficiency(model: Any, *, batch_size: int = 1, latency: bool = False,
                     device: str | torch.device = "cpu") -> Efficiency:
    """Cost of ``model`` (a SplitModel) on a zero input of its spec's shape; latency of the edge if asked."""
    device = torch.device(device)
    x = torch.zeros(batch_size, *model.spec.input_shape, device=device)
    edge, cloud = model.edge.to(device), model.cloud.to(device)
    with torch.no_grad():
        was = edge.training
        edge.eval()
        z = edge(x)
        edge.train(was)
    edge_ms = cloud_ms = float("nan")
    if latency:
        modes = edge.training, cloud.training
        edge.eval()
        cloud.eval()
        with torch.no_grad():
            edge_ms = measure_latency(lambda: edge(x))
            cloud_ms = measure_latency(lambda: cloud(z))
        edge.train(modes[0])
        cloud.train(modes[1])
    return Efficiency(edge_params=count_parameters(edge), cloud_params=count_parameters(cloud),
                      edge_macs=count_macs(edge, x), cloud_macs=count_macs(cloud, z), edge_ms=edge_ms,
                      batch_size=batch_size, cloud_ms=cloud_ms)
