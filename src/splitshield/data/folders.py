"""Image-folder datasets: ``root/train/<class>/*.png|jpg|...`` and ``root/test/<class>/`` (or ``root/val/``).

``imagefolder`` reads any such folder; ``tinyimagenet`` and ``facescrub`` read the layouts ``splitshield prepare``
writes. Classes are the sorted sub-folder names of ``train/``. Every image is decoded once with PIL, centre-cropped to
a square and resized, and kept in memory as uint8: these datasets fit in memory (TinyImageNet is 100k x 64x64x3 =
1.2 GB) and decoding JPEG/PNG on every epoch would dominate a 2-core machine's time.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import ClassVar, Optional, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from splitshield.data.base import DATASETS, DataSource, DatasetInfo, Split, TensorImageDataset
from splitshield.errors import DatasetNotFound, UserError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp"})
SIZES = (28, 32, 48, 64)  # the input sizes our split models are built for
STATS_FILE = "stats.json"  # optional {"mean": [...], "std": [...]} in a dataset root; `prepare facescrub` writes it
_GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F"})


def is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def nearest_size(side: int) -> int:
    """The nearest of 28/32/48/64 to ``side``; a tie goes to the larger size (less detail thrown away)."""
    return min(SIZES, key=lambda s: (abs(s - side), -s))


def to_square(image: Image.Image, size: int) -> Image.Image:
    """Centre-crop to a square on the shorter side, then resize; a size x size image is returned untouched."""
    w, h = image.size
    if w != h:
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        image = image.crop((left, top, left + side, top + side))
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    return image


def decode_error(path: str, exc: Exception) -> UserError:
    why = "not a recognised image format" if isinstance(exc, UnidentifiedImageError) else str(exc)
    return UserError(f"cannot decode image {path} ({why}); delete or replace the file")


def read_image(path: str, size: int) -> tuple[np.ndarray, bool]:
    """(size, size, 3) uint8 RGB pixels and whether the file was grayscale."""
    try:
        with Image.open(path) as im:
            im.load()
            gray = im.mode in _GRAY_MODES
            rgb = to_square(im.convert("RGB"), size)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise decode_error(path, exc) from None
    return np.asarray(rgb, dtype=np.uint8), gray


def channel_stats(images: torch.Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of uint8 (N, C, H, W) images in [0, 1], in chunks to bound memory."""
    c = images.shape[1]
    total = torch.zeros(c, dtype=torch.float64)
    squares = torch.zeros(c, dtype=torch.float64)
    for start in range(0, len(images), chunk):
        x = images[start:start + chunk].to(torch.float64).div_(255.0)
        total += x.sum(dim=(0, 2, 3))
        squares += x.square().sum(dim=(0, 2, 3))
    count = max(1, images.numel() // c)
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(1e-12).sqrt()
    return tuple(round(float(v), 4) for v in mean), tuple(round(float(v), 4) for v in std)


def scan_split(split_dir: str) -> dict[str, list[str]]:
    """class name -> sorted image paths, for the (non-hidden) class sub-folders of ``split_dir``."""
    out: dict[str, list[str]] = {}
    for name in sorted(os.listdir(split_dir)):
        folder = os.path.join(split_dir, name)
        if name.startswith(".") or not os.path.isdir(folder):
            continue
        out[name] = sorted(os.path.join(folder, f) for f in os.listdir(folder)
                           if is_image(f) and os.path.isfile(os.path.join(folder, f)))
    return out


class FolderSource(DataSource):
    """Shared loader. Subclasses may fix ``fixed_size``/``fixed_channels``; ``fixed_stats`` uses ``info.mean/std``
    instead of measuring the train images."""

    fixed_size: ClassVar[Optional[int]] = None
    fixed_channels: ClassVar[Optional[int]] = None
    fixed_stats: ClassVar[bool] = False

    def __init__(self, root: Optional[str] = None, download: bool = True) -> None:
        super().__init__(root=root, download=download)
        self._files: Optional[dict[str, list[tuple[str, int]]]] = None
        self._classes: tuple[str, ...] = ()
        self._root_dir = ""
        self._decoded: dict[str, tuple[torch.Tensor, torch.Tensor, bool]] = {}

    def _missing(self, why: str) -> DatasetNotFound:
        return DatasetNotFound(f"{self.info.name} {why}; {self.how_to_get}")

    def _scan(self) -> dict[str, list[tuple[str, int]]]:
        if self._files is not None:
            return self._files
        roots = self.candidate_roots()
        root = next((r for r in roots if os.path.isdir(os.path.join(r, "train"))), None)
        if root is None:
            looked = ", ".join(roots) if roots else "nowhere, data.root is not set"
            raise self._missing(f"not found (no train/ folder in {looked})")
        test_dir = next((os.path.join(root, d) for d in ("test", "val") if os.path.isdir(os.path.join(root, d))), None)
        if test_dir is None:
            raise self._missing(f"in {root} has train/ but no test/ or val/ folder")
        train = scan_split(os.path.join(root, "train"))
        if not train:
            raise self._missing(f"in {root}: train/ has no class sub-folders (expected train/<class>/*.png)")
        empty = [c for c, paths in train.items() if not paths]
        if empty:
            raise UserError(f"{root}/train/{empty[0]} has no images ({', '.join(sorted(IMAGE_EXTENSIONS))}); "
                            "add images or remove the folder")
        test = scan_split(test_dir)
        unknown = sorted(set(test) - set(train))
        if unknown and any(test[c] for c in unknown):
            raise UserError(f"{test_dir}/{unknown[0]} is a class that train/ lacks; "
                            "test classes must also appear under train/")
        index = {c: i for i, c in enumerate(train)}
        self._root_dir, self._classes = root, tuple(train)
        self._files = {split: [(p, index[c]) for c, paths in tree.items() for p in paths]
                       for split, tree in (("train", train), ("test", test))}
        return self._files

    def _size(self) -> int:
        if self.fixed_size:
            return self.fixed_size
        first = self._scan()["train"][0][0]
        try:
            with Image.open(first) as im:
                return nearest_size(min(im.size))
        except (OSError, ValueError) as exc:
            raise decode_error(first, exc) from None

    def _decode(self, split: Split) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """(uint8 RGB images (N, 3, S, S), labels, every image grayscale?) for one split, decoded once."""
        if split not in self._decoded:
            files, size = self._scan()[split], self._size()
            log.info("decoding %d %s images of %s at %dx%d", len(files), split, self.info.name, size, size)
            # PIL releases the GIL while decoding, so threads give a real speed-up here.
            with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
                decoded = list(pool.map(lambda f: read_image(f[0], size), files))
            images = np.stack([d[0] for d in decoded]) if decoded else np.zeros((0, size, size, 3), np.uint8)
            labels = torch.tensor([f[1] for f in files], dtype=torch.int64)
            tensor = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
            self._decoded[split] = (tensor, labels, all(d[1] for d in decoded))
        return self._decoded[split]

    def _channels(self) -> int:
        if self.fixed_channels:
            return self.fixed_channels
        # One channel only when every image of both splits is grayscale, so train and test always agree.
        return 1 if self._decode("train")[2] and self._decode("test")[2] else 3

    def _stats(self, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
        if self.fixed_stats:
            return self.info.mean, self.info.std
        path = os.path.join(self._root_dir, STATS_FILE)
        if os.path.isfile(path):
            try:
                with open(path, encoding="utf-8") as fh:
                    stats = json.load(fh)
                mean, std = tuple(map(float, stats["mean"])), tuple(map(float, stats["std"]))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise UserError(f"{path} is unreadable ({exc}); delete it to recompute the statistics") from None
            if len(mean) == len(std) == channels:
                return mean, std
            log.warning("%s has %d channels of statistics, expected %d; measuring instead", path, len(mean), channels)
        return channel_stats(self.load("train").images)

    def dataset_info(self) -> DatasetInfo:
        self._scan()
        channels = self._channels()
        mean, std = self._stats(channels)
        size = self._size()
        extra = {} if self.fixed_size else {"crop_padding": size // 8}
        return dataclasses.replace(self.info, num_classes=len(self._classes), class_names=self._classes,
                                   channels=channels, size=size, mean=mean, std=std, **extra)

    def load(self, split: Split) -> TensorImageDataset:
        images, labels, _ = self._decode(split)
        if self._channels() == 1:
            images = images[:, :1].contiguous()  # gray decoded as RGB has three equal channels
        return TensorImageDataset(images, labels)


@DATASETS.register("imagefolder")
class ImageFolder(FolderSource):
    """Any folder root/train/<class>/*.png|jpg and root/test|val/<class>/ (set data.root); shape from the data."""

    # Placeholder: the real classes, size, channels and statistics come from dataset_info(). Augmentation is a
    # random crop with size//8 padding only: flips or rotations would corrupt user data such as digits or text.
    info = DatasetInfo(name="imagefolder", num_classes=0, channels=3, size=32, mean=(0.5, 0.5, 0.5),
                       std=(0.25, 0.25, 0.25))
    how_to_get = "set data.root to a folder with train/<class>/*.png (or .jpg) and test/<class>/ (or val/)"


@DATASETS.register("tinyimagenet")
class TinyImageNet(FolderSource):
    """TinyImageNet-200: 64x64 RGB, 200 classes, val used as test (run 'splitshield prepare tinyimagenet')."""

    info = DatasetInfo(name="tinyimagenet", num_classes=200, channels=3, size=64,
                       mean=(0.4802, 0.4481, 0.3975), std=(0.2770, 0.2691, 0.2821),
                       crop_padding=4, hflip=True, rotation=15.0)
    default_roots: ClassVar[Sequence[str]] = ("~/.cache/splitshield/tinyimagenet",)
    how_to_get = ("download http://cs231n.stanford.edu/tiny-imagenet-200.zip and run "
                  "'splitshield prepare tinyimagenet --src tiny-imagenet-200.zip', or set data.root")
    fixed_size, fixed_channels, fixed_stats = 64, 3, True


@DATASETS.register("facescrub")
class FaceScrub(FolderSource):
    """FaceScrub faces at 48x48 RGB, identities as classes (run 'splitshield prepare facescrub')."""

    # The paper's augmentation for every dataset (pad-4 crop, flip, 15 degree rotation); mean/std are
    # placeholders replaced by stats.json or by measuring the train images.
    info = DatasetInfo(name="facescrub", num_classes=530, channels=3, size=48, mean=(0.5, 0.5, 0.5),
                       std=(0.25, 0.25, 0.25), crop_padding=4, hflip=True, rotation=15.0)
    default_roots: ClassVar[Sequence[str]] = ("~/.cache/splitshield/facescrub",)
    how_to_get = ("download FaceScrub (per-person image folders) and run "
                  "'splitshield prepare facescrub --src DIR', or set data.root")
    fixed_size, fixed_channels = 48, 3
