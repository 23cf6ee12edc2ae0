"""Synthetic class-conditional images for tests: tiny, deterministic, learnable (each class has a template)."""
from __future__ import annotations

import torch

from splitshield.data.base import DATASETS, DataSource, DatasetInfo, Split, TensorImageDataset


@DATASETS.register("synthetic")
class Synthetic(DataSource):
    """Class templates plus noise; ``root`` is ignored. Sizes: 256 train / 128 test images of 1x16x16."""

    info = DatasetInfo(name="synthetic", num_classes=4, channels=1, size=16, mean=(0.5,), std=(0.25,),
                       class_names=("a", "b", "c", "d"), crop_padding=1, hflip=True)
    sizes = {"train": 256, "test": 128}

    def load(self, split: Split) -> TensorImageDataset:
        info = self.dataset_info()
        g = torch.Generator().manual_seed(1234)
        # float32 whatever torch's default dtype: the same images in every process (they are rounded to uint8)
        templates = torch.rand(info.num_classes, info.channels, info.size, info.size, generator=g,
                               dtype=torch.float32)
        g.manual_seed(1 if split == "train" else 2)
        n = self.sizes[split]
        labels = torch.arange(n) % info.num_classes
        noise = 0.25 * torch.randn(n, info.channels, info.size, info.size, generator=g, dtype=torch.float32)
        images = (templates[labels] + noise).clamp(0, 1).mul(255).round().to(torch.uint8)
        return TensorImageDataset(images, labels)


@DATASETS.register("synthetic-rgb")
class SyntheticRGB(Synthetic):
    """3-channel 32x32 variant, to exercise CIFAR-shaped models in tests."""

    info = DatasetInfo(name="synthetic-rgb", num_classes=4, channels=3, size=32, mean=(0.5, 0.5, 0.5),
                       std=(0.25, 0.25, 0.25), class_names=("a", "b", "c", "d"), crop_padding=4, hflip=True,
                       rotation=15.0)
    sizes = {"train": 64, "test": 32}


@DATASETS.register("synthetic-cifar")
class SyntheticCIFAR(Synthetic):
    """CIFAR-10-shaped (3x32x32, 10 classes, 10,000 / 2,000 images) class templates plus noise: enough batches to
    time a paper-scale model on a GPU without downloading anything (scripts/gpu-check.sh)."""

    info = DatasetInfo(name="synthetic-cifar", num_classes=10, channels=3, size=32, mean=(0.5, 0.5, 0.5),
                       std=(0.25, 0.25, 0.25), class_names=tuple("abcdefghij"), crop_padding=4, hflip=True,
                       rotation=15.0)
    sizes = {"train": 10000, "test": 2000}
