"""Deterministic subsets and seeded loaders; each loader owns its torch.Generator.

With several processes (torchrun, see train/distributed.py) rank r of N loads rows r::N of every global batch of
``data.batch_size``: the same seeded order on every rank, the same generator states (so any rank's checkpoint
resumes all of them), and batches that together are exactly the single-process batches.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Iterator, Optional

import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler, Subset

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


class ShardSampler(Sampler[int]):
    """Rank ``rank``'s share of an epoch: the order a single process's RandomSampler draws from ``generator``,
    padded to a multiple of ``world`` with its first items, then rows r::N.

    Interleaving (not contiguous blocks) is what makes rank r's i-th batch of B/N rows the rows r::N of the
    single-process i-th batch of B. The padding gives every rank the same number of steps (a rank with one step
    more would wait forever in the gradient all-reduce); like torch's DistributedSampler, the at most N - 1 padded
    items are trained on twice in the last batch of an epoch, and CEM drops them (``gather_interleaved``)."""

    def __init__(self, size: int, generator: torch.Generator, rank: int, world: int, *, shuffle: bool = True
                 ) -> None:
        self.size, self.generator, self.rank, self.world, self.shuffle = size, generator, rank, world, shuffle

    def __len__(self) -> int:
        return -(-self.size // self.world)

    def __iter__(self) -> Iterator[int]:
        # RandomSampler itself, so the generator advances exactly as in one process: it draws the permutation on the
        # first item and draws again when read past the end (which a loop cut by max_steps_per_epoch never does).
        source = iter(RandomSampler(range(self.size), generator=self.generator) if self.shuffle else range(self.size))
        order = torch.tensor([next(source) for _ in range(self.size)], dtype=torch.long)
        total = len(self) * self.world
        if total > self.size:
            order = order.repeat(-(-total // self.size))[:total]
        yield from order[self.rank::self.world].tolist()
        for _ in source:  # this rank's epoch ran to its end, hence so did the single-process one: draw what it draws
            pass


class RankSliceAugment(BatchAugment):
    """The augmentation of rows r::N of the global batch, drawn exactly as one process draws it for the whole batch.

    Every rank draws the global batch's random numbers from the shared generator and keeps its own rows, so the
    augmentation matches the single-process run and the generator state stays equal on all ranks. The cost is
    augmenting N times the rows (zeros in place of the other ranks' images): small next to the model's step."""

    def __init__(self, *, rank: int, world: int, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.rank, self.world = rank, world

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return x
        full = x.new_zeros((x.shape[0] * self.world, *x.shape[1:]))
        full[self.rank::self.world] = x
        return super().__call__(full)[self.rank::self.world].contiguous()


def make_source(cfg: DataConfig) -> DataSource:
    return DATASETS.get(cfg.name)(root=cfg.root, download=cfg.download)


@functools.lru_cache(maxsize=8)
def _split(name: str, root: Optional[str], download: bool, data_env: Optional[str], split: str) -> Dataset:
    """A dataset split decoded once per process (training, every attack, the audit and the export of a run all
    read the same files); keyed by where it is read from, including $SPLITSHIELD_DATA."""
    return DATASETS.get(name)(root=root, download=download).load(split)  # type: ignore[arg-type]


def load_split(cfg: DataConfig, split: str) -> Dataset:
    return _split(cfg.name, cfg.root, cfg.download, os.environ.get("SPLITSHIELD_DATA"), split)


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


def build_data(cfg: DataConfig, seed: int, *, train_shuffle: bool = True, rank: int = 0, world: int = 1,
               pin_memory: bool = False) -> DataBundle:
    """Datasets, loaders and augmentation; with ``world`` > 1, rank ``rank``'s shard (``cfg.batch_size`` is then
    the global batch, B / world rows per rank, unless ``ddp_batch: per_rank``; each rank evaluates rows r::N of the
    test set). ``pin_memory``: page-locked batches for asynchronous copies to a GPU."""
    source = make_source(cfg)
    info = source.dataset_info()
    train = subset(load_split(cfg, "train"), cfg.train_size, seed, "train")
    test = subset(load_split(cfg, "test"), cfg.test_size, seed + 1, "test")
    g = torch.Generator().manual_seed(seed)
    augment_args = dict(crop_padding=info.crop_padding if cfg.augment else 0, hflip=info.hflip and cfg.augment,
                        rotation=info.rotation if cfg.augment else 0.0,
                        generator=torch.Generator().manual_seed(seed + 7919))
    if world == 1:
        train_loader = DataLoader(train, batch_size=cfg.batch_size, shuffle=train_shuffle, generator=g,
                                  num_workers=cfg.num_workers, drop_last=False, pin_memory=pin_memory,
                                  persistent_workers=False)
        test_loader = DataLoader(test, batch_size=cfg.eval_batch_size, shuffle=False, num_workers=cfg.num_workers,
                                 pin_memory=pin_memory)
        augment = BatchAugment(**augment_args)  # type: ignore[arg-type]
        return DataBundle(info, train, test, train_loader, test_loader, augment, g)
    if cfg.ddp_batch == "global" and cfg.batch_size % world:
        raise ConfigError(f"data.batch_size={cfg.batch_size} is the global batch and must be divisible by the "
                          f"{world} processes; choose a multiple of {world} (or data.ddp_batch=per_rank)")
    per_rank = cfg.batch_size // world if cfg.ddp_batch == "global" else cfg.batch_size
    sampler = ShardSampler(len(train), g, rank, world, shuffle=train_shuffle)  # type: ignore[arg-type]
    # generator=g as well: the loader draws its worker base seed from it first, as in the single-process run.
    train_loader = DataLoader(train, batch_size=per_rank, sampler=sampler, generator=g, num_workers=cfg.num_workers,
                              drop_last=False, persistent_workers=False, pin_memory=pin_memory)
    shard = list(range(rank, len(test), world))  # type: ignore[arg-type]
    test_loader = DataLoader(test, batch_size=cfg.eval_batch_size, sampler=shard, num_workers=cfg.num_workers,
                             pin_memory=pin_memory)
    augment = RankSliceAugment(rank=rank, world=world, **augment_args)
    return DataBundle(info, train, test, train_loader, test_loader, augment, g)
