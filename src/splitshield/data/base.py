"""Dataset sources: a registry of named sources, each giving in-range uint8 images (N, C, H, W) and labels.

Pixels stay raw ([0, 255] on disk, [0, 1] in the training loop); normalisation lives inside the model so that
attacks reconstruct raw pixels.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import ClassVar, Literal, Optional, Sequence

import torch
from torch.utils.data import Dataset

from splitshield.registry import Registry

Split = Literal["train", "test"]


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    channels: int
    size: int  # square images, size x size
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...] = ()
    # Batched augmentation the paper uses for this data (applied on the fly, seeded, see augment.py).
    crop_padding: int = 0
    hflip: bool = False
    rotation: float = 0.0

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.size, self.size)


class TensorImageDataset(Dataset):
    """In-memory uint8 images (N, C, H, W) with int64 labels."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        if len(images) != len(labels):
            raise ValueError("images and labels differ in length")
        self.images = images
        self.labels = labels.long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index]

    @property
    def targets(self) -> torch.Tensor:
        return self.labels


class DataSource:
    """A named dataset. Subclasses set ``info`` and implement ``load``."""

    info: ClassVar[DatasetInfo]
    default_roots: ClassVar[Sequence[str]] = ()
    how_to_get: ClassVar[str] = ""

    def __init__(self, root: Optional[str] = None, download: bool = True) -> None:
        self.root = root
        self.download = download

    def dataset_info(self) -> DatasetInfo:
        return self.info

    def candidate_roots(self) -> list[str]:
        if self.root:
            return [os.path.expanduser(self.root)]
        env = os.environ.get("SPLITSHIELD_DATA")
        roots = [os.path.join(env, self.info.name)] if env else []
        return roots + [os.path.expanduser(r) for r in self.default_roots]

    def load(self, split: Split) -> Dataset:
        raise NotImplementedError


DATASETS: Registry[type[DataSource]] = Registry("dataset")


def cache_dir(name: str) -> str:
    base = os.environ.get("SPLITSHIELD_DATA") or os.path.join(os.path.expanduser("~"), ".cache", "splitshield")
    return os.path.join(base, name)


def labels_tensor(values: Sequence[int]) -> torch.Tensor:
    return torch.as_tensor(list(values), dtype=torch.int64)


