"""CIFAR-10 and CIFAR-100 in the "python version" on-disk format (the layout torchvision downloads).

Files: ``cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}`` and
``cifar-100-python/{train, test, meta}``; each is a pickled dict with ``b"data"`` (N, 3072) uint8, rows holding the
red, green and blue 32x32 planes in turn, and ``b"labels"`` (CIFAR-10) or ``b"fine_labels"`` (CIFAR-100).

We read the pickles ourselves instead of through torchvision's classes: torchvision insists on the official
archive's md5, so tests could not use small generated files, and it unpickles without restriction.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import pickle
from typing import Any, ClassVar, Optional

import numpy as np
import torch

from splitshield.data.base import DATASETS, DataSource, DatasetInfo, Split, TensorImageDataset, cache_dir
from splitshield.errors import DatasetNotFound, UserError

log = logging.getLogger(__name__)

# Unpickling runs whatever callables the file names, so a doctored "dataset" could execute code. The real files
# only ever need numpy's array reconstruction (module spelled numpy.core before numpy 2, numpy._core after);
# dicts, lists, ints and bytes need no globals at all. Everything else is refused.
_ALLOWED_GLOBALS = frozenset(
    (module, name)
    for module in ("numpy.core.multiarray", "numpy._core.multiarray")
    for name in ("_reconstruct",)
) | {("numpy", "ndarray"), ("numpy", "dtype")}


class _Refused(pickle.UnpicklingError):
    pass


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise _Refused(f"refusing to load global {module}.{name}")
        return super().find_class(module, name)


def load_pickle(path: str) -> dict:
    """Read one CIFAR batch/meta pickle safely; keys come back as str (the files store py2 byte-string keys)."""
    try:
        with open(path, "rb") as fh:
            # encoding="bytes" is the official CIFAR recipe for the python-2 pickles: str payloads stay bytes.
            obj = _RestrictedUnpickler(fh, encoding="bytes").load()
    except _Refused as exc:
        raise UserError(f"{path} is not a CIFAR pickle ({exc}: it could run code); re-download the dataset") \
            from None
    except (pickle.UnpicklingError, OSError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, MemoryError) as exc:
        raise UserError(f"{path} is truncated or corrupt ({type(exc).__name__}: {exc}); "
                        "re-download the dataset") from None
    if not isinstance(obj, dict):
        raise UserError(f"{path} is not a CIFAR pickle (expected a dict, got {type(obj).__name__}); "
                        "re-download the dataset")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _names(values: Any) -> tuple[str, ...]:
    return tuple(v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values)


class CIFARSource(DataSource):
    """Shared reader; subclasses name the folder, files and label key."""

    folder: ClassVar[str]
    split_files: ClassVar[dict[str, tuple[str, ...]]]
    meta_file: ClassVar[str]
    label_key: ClassVar[str]
    names_key: ClassVar[str]
    torchvision_class: ClassVar[str]

    def _locate(self, split: Split) -> Optional[str]:
        """The first directory holding any of the split's files (missing siblings are reported when reading)."""
        for root in self.candidate_roots():
            for d in (os.path.join(root, self.folder), root):
                if any(os.path.isfile(os.path.join(d, f)) for f in self.split_files[split]):
                    return d
        return None

    def _try_download(self) -> None:
        target = cache_dir(self.info.name)
        try:
            import torchvision.datasets as tvd  # lazy: a broken torchvision must not break other datasets

            cls = getattr(tvd, self.torchvision_class)
            cls(target, train=True, download=True)
            cls(target, train=False, download=True)
        except Exception as exc:  # noqa: BLE001 - offline machines land here; the caller says how to get the data
            log.warning("could not download %s into %s: %s", self.info.name, target, exc)

    def _directory(self, split: Split) -> str:
        found = self._locate(split)
        if found is None and self.download and not self.root:
            self._try_download()
            found = self._locate(split)
        if found is None:
            where = ", ".join(self.candidate_roots())
            raise DatasetNotFound(f"{self.info.name} not found (looked in {where}); {self.how_to_get}")
        return found

    def dataset_info(self) -> DatasetInfo:
        """The fixed info, with class names from the meta file when one is present (else the standard names)."""
        found = self._locate("test") or self._locate("train")
        meta = os.path.join(found, self.meta_file) if found else ""
        if not meta or not os.path.isfile(meta):
            return self.info
        names = load_pickle(meta).get(self.names_key)
        if names is None or len(names) != self.info.num_classes:
            raise UserError(f"{meta}: expected {self.info.num_classes} entries under {self.names_key!r}; "
                            "re-download the dataset")
        return dataclasses.replace(self.info, class_names=_names(names))

    def _read_batch(self, path: str) -> tuple[np.ndarray, np.ndarray]:
        batch = load_pickle(path)
        data, labels = batch.get("data"), batch.get(self.label_key)
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            shape = getattr(data, "shape", None)
            raise UserError(f"{path}: 'data' must be a uint8 array of shape (N, 3072), got {shape}; "
                            "re-download the dataset")
        try:
            labels = np.asarray(labels, dtype=np.int64)
        except (TypeError, ValueError):
            labels = np.zeros(0, dtype=np.int64)
        if labels.shape != (len(data),):
            raise UserError(f"{path}: expected {len(data)} labels under {self.label_key!r}, "
                            f"got shape {labels.shape}; re-download the dataset")
        if len(labels) and (labels.min() < 0 or labels.max() >= self.info.num_classes):
            raise UserError(f"{path}: labels outside 0..{self.info.num_classes - 1}; is this the right dataset?")
        return data, labels

    def load(self, split: Split) -> TensorImageDataset:
        directory = self._directory(split)
        datas, labels = [], []
        for name in self.split_files[split]:
            path = os.path.join(directory, name)
            if not os.path.isfile(path):
                raise DatasetNotFound(f"{path} is missing (incomplete {self.info.name}); {self.how_to_get}")
            d, y = self._read_batch(path)
            datas.append(d)
            labels.append(y)
        # (N, 3072) rows are R, G, B planes of 32x32 in row-major order -> (N, 3, 32, 32).
        images = np.concatenate(datas).reshape(-1, 3, 32, 32)
        return TensorImageDataset(torch.from_numpy(images.copy()), torch.from_numpy(np.concatenate(labels)))


_HOW = ("run once online with data.download=true (torchvision fetches it into $SPLITSHIELD_DATA/{name} or "
        "~/.cache/splitshield/{name}) or set data.root to the folder holding {folder}/")


@DATASETS.register("cifar10")
class CIFAR10(CIFARSource):
    """CIFAR-10: 60k 32x32 RGB images, 10 classes (torchvision's cifar-10-batches-py files)."""

    info = DatasetInfo(
        name="cifar10", num_classes=10, channels=3, size=32,
        mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616),
        class_names=("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
        crop_padding=4, hflip=True, rotation=15.0,
    )
    default_roots = ("~/.cache/splitshield/cifar10",)
    folder = "cifar-10-batches-py"
    split_files = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
    meta_file = "batches.meta"
    label_key = "labels"
    names_key = "label_names"
    torchvision_class = "CIFAR10"
    how_to_get = _HOW.format(name="cifar10", folder=folder)


_CIFAR100_NAMES = tuple("""
apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel can castle
caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin elephant flatfish
forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster man maple_tree motorcycle
mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree plain plate poppy porcupine
possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper snail snake spider squirrel streetcar
sunflower sweet_pepper table tank telephone television tiger tractor train trout tulip turtle wardrobe whale
willow_tree wolf woman worm
""".split())


@DATASETS.register("cifar100")
class CIFAR100(CIFARSource):
    """CIFAR-100: 60k 32x32 RGB images, 100 fine classes (torchvision's cifar-100-python files)."""

    info = DatasetInfo(
        name="cifar100", num_classes=100, channels=3, size=32,
        mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762),
        class_names=_CIFAR100_NAMES, crop_padding=4, hflip=True, rotation=15.0,
    )
    default_roots = ("~/.cache/splitshield/cifar100",)
    folder = "cifar-100-python"
    split_files = {"train": ("train",), "test": ("test",)}
    meta_file = "meta"
    label_key = "fine_labels"
    names_key = "fine_label_names"
    torchvision_class = "CIFAR100"
    how_to_get = _HOW.format(name="cifar100", folder=folder)
