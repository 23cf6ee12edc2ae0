"""MNIST-family IDX files (Fashion-MNIST from the Debian package dataset-fashion-mnist, MNIST)."""
from __future__ import annotations

import gzip
import os
from typing import Optional

import numpy as np
import torch

from splitshield.data.base import DATASETS, DataSource, DatasetInfo, Split, TensorImageDataset, cache_dir
from splitshield.errors import DatasetNotFound, UserError

_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str) -> np.ndarray:
    """Read an IDX file (optionally gzipped): magic 0x0000TTDD, D big-endian uint32 dims, then the data."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:
        raise UserError(f"cannot read IDX file {path}: {exc}; re-download or reinstall the dataset") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise UserError(f"{path} is not an IDX file (bad magic number); re-download the dataset")
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_DTYPES[raw[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - header != expected:
        raise UserError(f"{path} is truncated or corrupt ({len(raw) - header} data bytes, expected {expected})")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)


def _find(root: str, stem: str) -> Optional[str]:
    for sub in ("", "raw", "FashionMNIST/raw", "MNIST/raw"):
        for suffix in ("", ".gz"):
            path = os.path.join(root, sub, stem + suffix)
            if os.path.isfile(path):
                return path
    return None


class IDXSource(DataSource):
    torchvision_class = ""

    def _locate(self, split: Split) -> Optional[tuple[str, str]]:
        for root in self.candidate_roots():
            images, labels = (_find(root, stem) for stem in _FILES[split])
            if images and labels:
                return images, labels
        return None

    def _try_download(self) -> None:
        try:  # torchvision is an optional extra (and broken against some torch builds): never required
            import torchvision.datasets as tvd

            getattr(tvd, self.torchvision_class)(cache_dir(self.info.name), train=True, download=True)
            getattr(tvd, self.torchvision_class)(cache_dir(self.info.name), train=False, download=True)
        except Exception:  # noqa: BLE001 - offline machines land here; the caller reports how to get the data
            pass

    def load(self, split: Split) -> TensorImageDataset:
        found = self._locate(split)
        if found is None and self.download and not self.root:
            self._try_download()
            found = self._locate(split)
        if found is None:
            where = ", ".join(self.candidate_roots() + ([cache_dir(self.info.name)] if not self.root else []))
            raise DatasetNotFound(f"{self.info.name} not found (looked in {where}); {self.how_to_get}")
        images, labels = (read_idx(p) for p in found)
        if images.ndim != 3 or len(images) != len(labels):
            raise UserError(f"{found[0]}: expected N x H x W images matching {len(labels)} labels")
        return TensorImageDataset(torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)))


@DATASETS.register("fashion-mnist")
class FashionMNIST(IDXSource):
    info = DatasetInfo(
        name="fashion-mnist", num_classes=10, channels=1, size=28, mean=(0.2860,), std=(0.3530,),
        class_names=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                     "Ankle boot"),
        crop_padding=2, hflip=True,
    )
    default_roots = ("/usr/share/datasets/fashion-mnist", cache_dir("fashion-mnist"))
    how_to_get = "install it with 'apt-get install dataset-fashion-mnist' (or 'make data'), or set data.root"
    torchvision_class = "FashionMNIST"


@DATASETS.register("mnist")
class MNIST(IDXSource):
    info = DatasetInfo(
        name="mnist", num_classes=10, channels=1, size=28, mean=(0.1307,), std=(0.3081,),
        class_names=tuple(str(i) for i in range(10)), crop_padding=2,
    )
    default_roots = ("/usr/share/datasets/mnist", cache_dir("mnist"))
    how_to_get = "run once online (downloads through torchvision) or set data.root to a folder of MNIST IDX files"
    torchvision_class = "MNIST"
