"""What the public API accepts as data and encoders, checked once, with errors that say what was expected.

Images: pixels in [0, 1] (float) or [0, 255] (uint8), (N, C, H, W); normalisation belongs inside the encoder, so an
attack reconstructs raw pixels. Data: an (N, C, H, W) tensor, an ``(images, labels)`` pair of tensors, a map-style
``Dataset`` of ``(image, label)`` items, or a ``DataLoader`` of ``(images, labels)`` batches. Attacks work on
uint8 images (the stored datasets' format): float images are rounded to the nearest of 256 levels.
"""
from __future__ import annotations

from typing import Any, Optional, Union, cast

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from splitshield.errors import UsageError

Data = Union[torch.Tensor, tuple, Dataset, DataLoader]


def _pair(item: Any, what: str) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    if isinstance(item, torch.Tensor):
        return item, None
    if isinstance(item, (tuple, list)) and len(item) >= 2 and isinstance(item[0], torch.Tensor):
        label = item[1]
        return item[0], label if isinstance(label, torch.Tensor) else torch.as_tensor(label)
    raise UsageError(f"{what}: expected (images, labels) items of tensors, got {type(item).__name__}"
                     + (f" of {len(item)}" if isinstance(item, (tuple, list)) else "")
                     + "; wrap your data so each item is (image tensor, label)")


def to_uint8(images: torch.Tensor, what: str) -> torch.Tensor:
    """(N, C, H, W) uint8 from uint8 or float images in [0, 1]; anything else is a UsageError."""
    if images.ndim != 4:
        raise UsageError(f"{what}: expected images of shape (N, C, H, W), got {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        return images.cpu()
    if not images.is_floating_point():
        raise UsageError(f"{what}: expected uint8 or float images, got {images.dtype}")
    lo, hi = float(images.min()), float(images.max())
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise UsageError(f"{what}: pixels must lie in [0, 1] (got [{lo:.3g}, {hi:.3g}]); put the normalisation "
                         "inside the encoder, so attacks reconstruct raw pixels")
    return images.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).cpu()


def images_and_labels(data: Data, what: str) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """All images of ``data`` as uint8 (N, C, H, W) on the CPU, and its labels (N,) if it has them."""
    if isinstance(data, torch.Tensor):
        return to_uint8(data, what), None
    if isinstance(data, tuple):
        images, labels = _pair(data, what)
        return to_uint8(images, what), labels.long().cpu() if labels is not None else None
    if isinstance(data, DataLoader):
        # A map-style dataset is read in index order (deterministic, and the loader's own generator untouched);
        # an iterable one through the loader.
        if hasattr(data.dataset, "__getitem__") and hasattr(data.dataset, "__len__"):
            return images_and_labels(data.dataset, what)
        batches = [_pair(b, what) for b in data]
        if not batches:
            raise UsageError(f"{what}: the loader yielded no batches")
        images = torch.cat([to_uint8(b[0], what) for b in batches])
        labels = None if any(b[1] is None for b in batches) else torch.cat(
            [cast(torch.Tensor, b[1]).long().cpu() for b in batches])
        return images, labels
    if isinstance(data, Dataset) or (hasattr(data, "__getitem__") and hasattr(data, "__len__")):
        stored = getattr(data, "images", None)
        if isinstance(stored, torch.Tensor) and stored.dtype == torch.uint8 and stored.ndim == 4:  # ours: no copy
            return stored, getattr(data, "labels", None)
        n = len(data)  # type: ignore[arg-type]
        if n == 0:
            raise UsageError(f"{what}: the dataset is empty")
        items = [_pair(data[i], what) for i in range(n)]
        images = torch.stack([img for img, _ in items])
        labels = None if any(lab is None for _, lab in items) else torch.stack(
            [cast(torch.Tensor, lab) for _, lab in items])
        return to_uint8(images, what), None if labels is None else labels.long().view(-1)
    raise UsageError(f"{what}: expected a tensor of images, an (images, labels) pair, a Dataset or a DataLoader, "
                     f"got {type(data).__name__}")


def module_device(module: nn.Module) -> torch.device:
    """The device of a module's first parameter or buffer (CPU for a module with neither)."""
    for tensor in list(module.parameters()) + list(module.buffers()):
        return tensor.device
    return torch.device("cpu")


def check_labels(y: torch.Tensor, num_classes: int, what: str) -> None:
    if y.ndim != 1 or y.dtype in (torch.float16, torch.float32, torch.float64, torch.bfloat16):
        raise UsageError(f"{what}: expected integer class labels of shape (B,), got {y.dtype} {tuple(y.shape)}")
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise UsageError(f"{what}: labels must lie in [0, {num_classes - 1}] (num_classes={num_classes}), got "
                         f"[{int(y.min())}, {int(y.max())}]")
