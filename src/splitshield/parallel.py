"""Processes of a data-parallel job (``torchrun``): the device, the process group, rank queries and the collectives
the training loop and the defenses use (a neutral layer: defenses and training both build on it).

torchrun describes the job in environment variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT).
Without them, or with WORLD_SIZE=1, every helper here is a no-op and training is the single-process loop, bit for
bit. With N processes, rank r trains on rows r::N of every global batch (see data/loaders.py ``ShardSampler``), so
N processes with per-rank batch B/N compute what one process computes with batch B: gradients are averaged by
DistributedDataParallel, batch-norm statistics are summed over ranks (``sync_batchnorm``), CEM sums its batch
statistics and gathers its features (defenses/cem.py), the simulated attacker averages its gradients. The DDP
wrapping and batch norm over ranks are training's (train/distributed.py).

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

from splitshield.errors import UserError

log = logging.getLogger(__name__)


def select_device(name: str) -> torch.device:
    """``auto``: CUDA, else Apple MPS, else the CPU; any other name as given."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


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


class AllSum(torch.autograd.Function):
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
