"""Data: IDX reading, deterministic subsets, seeded batched augmentation, missing-dataset errors."""
from __future__ import annotations

import gzip
import os

import numpy as np
import pytest
import torch

from splitshield.config import DataConfig
from splitshield.data import DATASETS, build_data
from splitshield.data.augment import BatchAugment
from splitshield.data.idx import read_idx
from splitshield.errors import DatasetNotFound, UserError


def write_idx(path: str, array: np.ndarray, compress: bool) -> None:
    code = {np.dtype(np.uint8): 0x08}[array.dtype]
    header = bytes([0, 0, code, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    opener = gzip.open if compress else open
    with opener(path, "wb") as fh:
        fh.write(header + array.tobytes())


def make_mnist_like(root: str, n_train: int = 20, n_test: int = 10, compress: bool = True) -> tuple:
    rng = np.random.default_rng(0)
    data = {}
    for split, n, prefix in (("train", n_train, "train"), ("test", n_test, "t10k")):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=(n,), dtype=np.uint8)
        suffix = ".gz" if compress else ""
        write_idx(os.path.join(root, f"{prefix}-images-idx3-ubyte{suffix}"), images, compress)
        write_idx(os.path.join(root, f"{prefix}-labels-idx1-ubyte{suffix}"), labels, compress)
        data[split] = (images, labels)
    return data


@pytest.mark.parametrize("compress", [True, False])
def test_idx_files_read_back_exactly_through_the_registry(tmp_path, compress: bool) -> None:
    data = make_mnist_like(str(tmp_path), compress=compress)
    bundle = build_data(DataConfig(name="fashion-mnist", root=str(tmp_path), batch_size=4), seed=0)
    assert len(bundle.train) == 20 and len(bundle.test) == 10
    image, label = bundle.test[3]
    assert image.shape == (1, 28, 28) and image.dtype == torch.uint8
    assert np.array_equal(image[0].numpy(), data["test"][0][3]) and int(label) == data["test"][1][3]
    assert bundle.info.num_classes == 10 and bundle.info.class_names[0] == "T-shirt/top"


def test_truncated_idx_is_a_one_line_user_error(tmp_path) -> None:
    path = tmp_path / "x-idx3-ubyte"
    write_idx(str(path), np.zeros((4, 28, 28), np.uint8), compress=False)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(UserError, match="truncated or corrupt"):
        read_idx(str(path))
    path.write_bytes(b"garbage!")
    with pytest.raises(UserError, match="bad magic"):
        read_idx(str(path))


def test_missing_dataset_says_how_to_get_it(tmp_path) -> None:
    with pytest.raises(DatasetNotFound, match="apt-get install dataset-fashion-mnist") as err:
        build_data(DataConfig(name="fashion-mnist", root=str(tmp_path / "empty")), seed=0)
    assert "\n" not in str(err.value)


def test_subsets_are_deterministic_for_a_seed_and_differ_across_seeds() -> None:
    a = build_data(DataConfig(name="synthetic", train_size=50), seed=3)
    b = build_data(DataConfig(name="synthetic", train_size=50), seed=3)
    c = build_data(DataConfig(name="synthetic", train_size=50), seed=4)
    assert a.train.indices == b.train.indices and a.train.indices != c.train.indices
    assert len(a.train) == 50


def test_oversized_subset_is_an_error() -> None:
    with pytest.raises(UserError, match="exceeds"):
        build_data(DataConfig(name="synthetic", train_size=10_000), seed=0)


def test_loader_batch_order_is_owned_by_its_generator() -> None:
    """Global RNG draws (e.g. a noise defense) must not change the batch order."""
    def labels(draw: bool) -> list:
        bundle = build_data(DataConfig(name="synthetic", batch_size=16), seed=0)
        out = []
        for _, y in bundle.train_loader:
            if draw:
                torch.randn(1000)
            out.append(y.tolist())
        return out

    torch.manual_seed(0)
    assert labels(False) == labels(True)


def test_batch_augment_is_seeded_shape_preserving_and_does_something() -> None:
    x = torch.rand(8, 3, 32, 32)
    make = lambda: BatchAugment(crop_padding=4, hflip=True, rotation=15, generator=torch.Generator().manual_seed(1))  # noqa: E731
    a, b = make()(x), make()(x)
    assert torch.equal(a, b) and a.shape == x.shape
    assert not torch.equal(a, x)
    assert a.min() >= 0 and a.max() <= 1


def test_crop_only_shifts_pixels() -> None:
    x = torch.arange(16.0).view(1, 1, 4, 4).repeat(64, 1, 1, 1)
    out = BatchAugment(crop_padding=1, generator=torch.Generator().manual_seed(0))(x)
    # every output pixel is either padding (0) or a pixel of the input shifted by at most one
    assert set(out.unique().tolist()) <= set(range(16))
    assert (out != x).any()


def test_registry_lists_the_builtin_datasets() -> None:
    assert {"fashion-mnist", "mnist", "synthetic"} <= set(DATASETS.names())


@pytest.mark.slow
def test_real_fashion_mnist_loads() -> None:
    bundle = build_data(DataConfig(name="fashion-mnist"), seed=0)
    assert len(bundle.train) == 60000 and len(bundle.test) == 10000
