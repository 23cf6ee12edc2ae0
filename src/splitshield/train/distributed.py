"""Data-parallel training (``torchrun``): the model in DistributedDataParallel and batch norm over the global batch.

The process group, rank queries and collectives are in splitshield/parallel.py (the defenses use them too).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from splitshield.parallel import AllSum, world_size


def wrap(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` in DistributedDataParallel (one device per process)."""
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids, output_device=device.index if ids else None)


# --- batch norm over the global batch ---
class SyncBatchNorm(_BatchNorm):
    """Batch norm whose training statistics cover the batches of all ranks, on any device.

    torch's nn.SyncBatchNorm does the same on GPUs only (it refuses CPU tensors), so ``sync_batchnorm`` uses it on
    CUDA and this one elsewhere. Two passes, like the single-process kernel: the global mean, then the global mean
    of squared deviations; both sums go through ``AllSum`` so the gradient accounts for every rank's use of them.
    Alone or in eval mode it is the plain batch norm."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (N, C, ...), got {x.dim()}D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or world_size() == 1:
            return super().forward(x)
        self._check_input_dim(x)
        dims = [0] + list(range(2, x.dim()))
        shape = (1, -1) + (1,) * (x.dim() - 2)
        count = x.new_full((1,), x.numel() // x.shape[1])
        first = AllSum.apply(torch.cat([x.sum(dims), count]))
        n = first[-1].detach()
        mean = first[:-1] / n
        xc = x - mean.view(shape)
        var = AllSum.apply((xc * xc).sum(dims)) / n  # biased, as used for normalisation
        y = xc * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)  # type: ignore[union-attr]
                factor = (1.0 / float(self.num_batches_tracked)) if self.momentum is None else self.momentum
                self.running_mean.mul_(1 - factor).add_(mean.detach(), alpha=factor)
                unbiased = var.detach() * (n / (n - 1).clamp_min(1))
                self.running_var.mul_(1 - factor).add_(unbiased, alpha=factor)
        return y


def _to_sync(module: nn.Module) -> nn.Module:
    if isinstance(module, _BatchNorm) and not isinstance(module, (SyncBatchNorm, nn.SyncBatchNorm)):
        new = SyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,  # type: ignore[arg-type]
                            module.track_running_stats)
        if module.affine:
            new.weight, new.bias = module.weight, module.bias  # the same Parameter objects
        new.running_mean, new.running_var = module.running_mean, module.running_var
        new.num_batches_tracked = module.num_batches_tracked
        new.train(module.training)
        return new
    for name, child in module.named_children():
        module.add_module(name, _to_sync(child))
    return module


def sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Every batch-norm layer of ``module`` with statistics over all ranks (changed in place; returned).

    The new layers reuse the old parameters and buffers, so optimizers built before (the simulated attacker's)
    stay valid and state-dict keys are unchanged (a checkpoint loads into the plain model)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _to_sync(module)
