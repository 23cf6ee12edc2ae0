"""Deterministic subsets and seeded loaders; each loader owns its torch.Generator."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from splitshield.config import DataConfig
from splitshield.data.augment import BatchAugment
from splitshield.data.base import DATASETS, DatasetInfo, DataSource
from splitshield.errors import ConfigError


@dataclass
class DataBundle:
    info: DatasetInfo
    train: Dataset
    test: Dataset
    train_loader: DataLoader
    test_loader: DataLoader
    augment: BatchAugment
    loader_generator: torch.Generator  # batch order; saved in checkpoints for exact resume

    def rng_state(self) -> dict[str, torch.Tensor]:
        return {"loader": self.loader_generator.get_state(), "augment": self.augment.generator.get_state()}

    def set_rng_state(self, state: dict[str, torch.Tensor]) -> None:
        self.loader_generator.set_state(state["loader"])
        self.augment.generator.set_state(state["augment"])


def make_source(cfg: DataConfig) -> DataSource:
    return DATASETS.get(cfg.name)(root=cfg.root, download=cfg.download)


def subset(dataset: Dataset, size: int | None, seed: int, what: str) -> Dataset:
    """The first ``size`` items of a seeded permutation: the same subset for the same seed, on any machine."""
    n = len(dataset)  # type: ignore[arg-type]
    if size is None or size >= n:
        if size is not None and size > n:
            raise ConfigError(f"data.{what}_size={size} exceeds the {n} {what} images available")
        return dataset
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:size]
    return Subset(dataset, order.sort().values.tolist())


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [0, 1]."""
    return images.float().div_(255.0)


def build_data(cfg: DataConfig, seed: int, *, train_shuffle: bool = True) -> DataBundle:
    source = make_source(cfg)
    info = source.dataset_info()
    train = subset(source.load("train"), cfg.train_size, seed, "train")
    test = subset(source.load("test"), cfg.test_size, seed + 1, "test")
    g = torch.Generator().manual_seed(seed)
    train_loader = DataLoader(train, batch_size=cfg.batch_size, shuffle=train_shuffle, generator=g,
                              num_workers=cfg.num_workers, drop_last=False,
                              persistent_workers=False)
    test_loader = DataLoader(test, batch_size=cfg.eval_batch_size, shuffle=False, num_workers=cfg.num_workers)
    augment = BatchAugment(
        crop_padding=info.crop_padding if cfg.augment else 0,
        hflip=info.hflip and cfg.augment,
        rotation=info.rotation if cfg.augment else 0.0,
        generator=torch.Generator().manual_seed(seed + 7919),
    )
    return DataBundle(info, train, test, train_loader, test_loader, augment, g)
