"""Numeric precision and memory layout of the heavy passes (training, attacks): one decision, made per device.

``precision`` is a config value in training and attack configs:
- ``auto``: CUDA -> float16 autocast with a gradient scaler (AMP, as before); CPU -> bfloat16 autocast when the CPU
  has native bfloat16 matrix units (AVX-512 BF16 / AMX, where oneDNN runs bf16 convolutions at about twice the
  float32 rate), else float32; other devices -> float32.
- ``fp32``: no autocast (the reference; bit-exact with releases before bfloat16 became the CPU default).
- ``bf16`` / ``fp16``: that autocast dtype wherever the device has it.

``memory_format``: ``auto`` = channels-last for convolutions on CPU with bfloat16 (oneDNN's native layout: the
convolutions skip a reorder each way) and on CUDA; ``contiguous`` otherwise. The layout changes no value's meaning
(``flatten`` and indexing are logical), only speed.

Why bfloat16 does not need a loss scaler: it has float32's exponent range, so small gradients do not underflow.
Losses that are sums of many small terms or need a wide dynamic range (kernels of HSIC/COCO, log-determinants, SSIM,
Lipschitz ratios) are computed in float32 outside autocast by the code that owns them (``full_precision``).
"""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import Iterator, Literal

import torch
from torch import nn

Precision = Literal["auto", "fp32", "bf16", "fp16"]
MemoryFormat = Literal["auto", "channels_last", "contiguous"]
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")
MEMORY_FORMATS: tuple[str, ...] = ("auto", "channels_last", "contiguous")


@functools.lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """True when oneDNN reports native bfloat16 support on this CPU (AVX-512 BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@dataclass(frozen=True)
class Numerics:
    """What a pass runs with on one device: the autocast dtype (None = float32) and the tensor layout."""

    device_type: str
    dtype: torch.dtype | None
    channels_last: bool

    @property
    def scaled(self) -> bool:
        """float16 needs a gradient scaler; bfloat16 and float32 do not."""
        return self.dtype == torch.float16

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype] + (
            "+channels_last" if self.channels_last else "")

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def module(self, module: nn.Module) -> nn.Module:
        """Put a network's 4-d parameters and buffers in this layout (in place; returns the module)."""
        return module.to(memory_format=torch.channels_last) if self.channels_last else module

    def tensor(self, x: torch.Tensor) -> torch.Tensor:
        """A 4-d input batch in this layout (a no-op for one channel, where both layouts are the same)."""
        if self.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x


def resolve_numerics(precision: str, memory_format: str, device: torch.device | str) -> Numerics:
    """The numerics of ``precision`` / ``memory_format`` (config values) on ``device``."""
    device_type = torch.device(device).type
    dtype: torch.dtype | None
    if precision == "fp32":
        dtype = None
    elif precision == "bf16":
        dtype = torch.bfloat16 if device_type in ("cpu", "cuda") else None
    elif precision == "fp16":
        dtype = torch.float16 if device_type == "cuda" else None
    elif precision == "auto":
        dtype = torch.float16 if device_type == "cuda" else (
            torch.bfloat16 if device_type == "cpu" and cpu_has_bf16() else None)
    else:
        raise ValueError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    if memory_format == "auto":
        channels_last = device_type == "cuda" or (device_type == "cpu" and dtype == torch.bfloat16)
    elif memory_format in ("channels_last", "contiguous"):
        channels_last = memory_format == "channels_last"
    else:
        raise ValueError(f"unknown memory_format {memory_format!r}; valid: {', '.join(MEMORY_FORMATS)}")
    return Numerics(device_type, dtype, channels_last)


@contextlib.contextmanager
def full_precision(device_type: str) -> Iterator[None]:
    """Inside an autocast region: compute in float32 (the caller casts its inputs with ``.float()``)."""
    with torch.autocast(device_type, enabled=False):
        yield
