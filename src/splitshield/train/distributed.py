"""Data-parallel training over several processes (``torchrun``): the process group, rank queries, the collectives
the loop and the defenses use, and batch norm over the global batch.

torchrun describes the job in environment variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT).
Without them, or with WORLD_SIZE=1, every helper here is a no-op and training is the single-process loop, bit for
bit. With N processes, rank r trains on rows r::N of every global batch (see data/loaders.py ``ShardSampler``), so
N processes with per-rank batch B/N compute what one process computes with batch B: gradients are averaged by
DistributedDataParallel, batch-norm statistics are summed over ranks (``sync_batchnorm``), CEM sums its batch
statistics and gathers its features (defenses/cem.py), the simulated attacker averages its gradients.

Backends: NCCL on CUDA (one GPU per process, cuda:LOCAL_RANK), gloo on CPU.
"""
from __future__ import annotations

import atexit
import logging
import os
from typing import Any, Iterable, Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from splitshield.errors import UserError
from splitshield.train.optim import select_device

log = logging.getLogger(__name__)


def launched() -> bool:
    """Started by torchrun with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device_name: str = "auto") -> torch.device:
    """Join the process group torchrun describes (once per process) and return this rank's device.

    Alone (no torchrun, or one process) it only picks the device, as the single-process loop always did."""
    device = select_device(device_name)
    if not launched():
        return device
    if device.type not in ("cuda", "cpu"):
        raise UserError(f"distributed training runs on CUDA (nccl) or CPU (gloo), not {device.type}; "
                        "set train.device=cuda or train.device=cpu")
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        try:
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")  # env:// from torchrun's variables
        except ValueError as exc:  # a variable missing: started by hand instead of by torchrun
            raise UserError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} is set but the process group cannot start "
                            f"({str(exc).splitlines()[0]}); launch with torchrun --nproc_per_node N -m splitshield "
                            "...") from None
        atexit.register(_teardown)
    if not is_main():  # one progress log per job, from rank 0; warnings and errors still come from every rank
        logging.getLogger("splitshield").setLevel(logging.WARNING)
    return device


def _teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """Rank 0, the only process that writes checkpoints, metrics and results (True when alone)."""
    return rank() == 0


def rank_seed(seed: int) -> int:
    """Seed of this rank's own random streams (defense noise, dropout masks): distinct per rank, so ranks do not add
    the same noise to different images. Model initialisation and batch order use the shared ``seed``."""
    return seed + 1_000_003 * (rank() + 1)


def barrier() -> None:
    if world_size() > 1:
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def _comm(t: torch.Tensor) -> torch.Tensor:
    """``t`` on the device the backend communicates from (NCCL: the current GPU; gloo: where it is)."""
    if dist.get_backend() == "nccl" and t.device.type != "cuda":
        return t.to(torch.device("cuda", torch.cuda.current_device()))
    return t


# --- collectives (all ranks must call them in the same order) ---
@torch.no_grad()
def all_sum(t: torch.Tensor) -> torch.Tensor:
    """Element-wise sum over ranks, as a new tensor on ``t``'s device (``t`` itself when alone). No gradient."""
    if world_size() == 1:
        return t
    out = _comm(t.detach().clone())
    dist.all_reduce(out)
    return out.to(t.device)


class _AllSum(torch.autograd.Function):
    """Sum over ranks whose backward sums the gradients of all ranks: each rank's loss depends on every rank's input
    through the sum, so the gradient of the sum of the losses reaches each input from every rank."""

    @staticmethod
    def forward(ctx: Any, t: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return all_sum(t)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return all_sum(grad.contiguous())


def global_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of ``t`` over ranks for a loss term that every rank computes identically from that sum (CEM's Eq. 5-7).

    The gradient flows into this rank's ``t`` only, scaled by the number of ranks: DDP averages parameter gradients
    over ranks, which gives exactly the single-process gradient of the term, without a collective in backward."""
    world = world_size()
    if world == 1:
        return t
    local = t - t.detach()  # zero, carrying the gradient path to this rank's terms
    return all_sum(t.detach()) + world * local


def gather_interleaved(t: torch.Tensor, limit: Optional[int] = None) -> torch.Tensor:
    """Every rank's rows of ``t`` (the same count on each) in the global order of ``ShardSampler``: row s of rank r
    is global row s * N + r. ``limit`` drops global rows from that index on (the sampler's padding)."""
    world = world_size()
    if world == 1:
        return t if limit is None else t[:limit]
    rows = all_sum(torch.tensor([t.shape[0]], device=t.device)).item()
    if rows != t.shape[0] * world:  # the sampler gives every rank the same number of rows; anything else is a bug
        raise RuntimeError(f"gather_interleaved: ranks hold different row counts ({rows} in all, {t.shape[0]} here)")
    src = _comm(t.contiguous())
    parts = [torch.empty_like(src) for _ in range(world)]
    dist.all_gather(parts, src)
    out = torch.stack(parts, 1).flatten(0, 1).to(t.device)  # (rows, world, ...) -> (rows * world, ...)
    return out if limit is None else out[:limit]


def all_gather_objects(obj: Any) -> list[Any]:
    """``obj`` of every rank, in rank order (pickled in transit; for small state such as RNG states)."""
    if world_size() == 1:
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def average_gradients(params: Iterable[nn.Parameter]) -> None:
    """Replace each gradient by its mean over ranks (for helper modules outside DDP, e.g. the simulated attacker)."""
    world = world_size()
    if world == 1:
        return
    for p in params:
        if p.grad is not None:
            p.grad.copy_(all_sum(p.grad) / world)


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
    of squared deviations; both sums go through ``_AllSum`` so the gradient accounts for every rank's use of them.
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
        first = _AllSum.apply(torch.cat([x.sum(dims), count]))
        n = first[-1].detach()
        mean = first[:-1] / n
        xc = x - mean.view(shape)
        var = _AllSum.apply((xc * xc).sum(dims)) / n  # biased, as used for normalisation
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
