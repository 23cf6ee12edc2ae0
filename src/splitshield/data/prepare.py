"""Convert downloaded TinyImageNet / FaceScrub into the ``DEST/{train,test}/<class>/`` layout that folders.py reads.

Output is written into ``DEST/.prepare-partial`` and moved into place only when complete, so an interrupted run
never leaves a half dataset that would load silently with missing images.
"""
from __future__ import annotations

import json
import logging
import os
import random
import shutil
import zipfile
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import numpy as np
from PIL import Image

from splitshield.data.folders import is_image, to_square
from splitshield.errors import UserError

log = logging.getLogger(__name__)

PARTIAL = ".prepare-partial"


@dataclass
class PrepareReport:
    dataset: str
    dest: str
    classes: int
    train: int
    test: int
    skipped: int = 0  # unreadable source images left out

    def summary(self) -> str:
        skipped = f", skipped {self.skipped} unreadable files" if self.skipped else ""
        return (f"{self.dataset}: {self.classes} classes, {self.train} train / {self.test} test images "
                f"in {self.dest}{skipped}")


class _Staging:
    """DEST/.prepare-partial while writing; its train/ and test/ (and extra files) move into DEST on success."""

    def __init__(self, dest: str) -> None:
        self.dest = os.path.abspath(os.path.expanduser(dest))
        for split in ("train", "test"):
            existing = os.path.join(self.dest, split)
            if os.path.isdir(existing) and os.listdir(existing):
                raise UserError(f"{existing} already exists and is not empty; pick an empty --dest or delete it")
        self.path = os.path.join(self.dest, PARTIAL)

    def __enter__(self) -> "_Staging":
        shutil.rmtree(self.path, ignore_errors=True)  # left over from an interrupted run
        os.makedirs(self.path)
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            for name in sorted(os.listdir(self.path)):
                target = os.path.join(self.dest, name)
                if os.path.isdir(target):
                    os.rmdir(target)  # only empty ones get here (checked in __init__)
                os.replace(os.path.join(self.path, name), target)
        shutil.rmtree(self.path, ignore_errors=True)

    def file(self, split: str, label: str, name: str) -> str:
        folder = os.path.join(self.path, split, label)
        os.makedirs(folder, exist_ok=True)
        return os.path.join(folder, name)


# ---------------------------------------------------------------- TinyImageNet

class _Tree:
    """Files of a tiny-imagenet-200 folder or zip, by path relative to its top folder ('/'-separated)."""

    def __init__(self, src: str) -> None:
        self.src = os.path.expanduser(src)
        self.zip: Optional[zipfile.ZipFile] = None
        if not os.path.exists(self.src):
            raise UserError(f"--src {src} does not exist; pass the tiny-imagenet-200 folder or .zip")
        marker = "val/val_annotations.txt"
        if os.path.isfile(self.src):
            try:
                self.zip = zipfile.ZipFile(self.src)
                names = self.zip.namelist()
            except (zipfile.BadZipFile, OSError) as exc:
                raise UserError(f"--src {src} is not a readable zip ({exc}); re-download tiny-imagenet-200.zip") \
                    from None
            tops = sorted((n[: -len(marker)] for n in names if n == marker or n.endswith("/" + marker)), key=len)
            self.base = tops[0] if tops else None
            self.files = [n[len(self.base):] for n in names if self.base is not None and n.startswith(self.base)
                          and not n.endswith("/")]
        else:
            bases = [b for b in (self.src, os.path.join(self.src, "tiny-imagenet-200"))
                     if os.path.isfile(os.path.join(b, marker))]
            self.base = bases[0] if bases else None
            self.files = list(self._walk()) if self.base else []
        if self.base is None:
            raise UserError(f"--src {src} is not TinyImageNet (no {marker} inside); "
                            "pass the tiny-imagenet-200 folder or .zip")

    def _walk(self) -> Iterator[str]:
        for top in ("train", "val"):
            for folder, _, names in os.walk(os.path.join(self.base, top)):
                rel = os.path.relpath(folder, self.base).replace(os.sep, "/")
                yield from (f"{rel}/{n}" for n in names)

    def read_text(self, rel: str) -> str:
        if self.zip is not None:
            return self.zip.read(self.base + rel).decode("utf-8")
        with open(os.path.join(self.base, rel), encoding="utf-8") as fh:
            return fh.read()

    def place(self, rel: str, out: str, link: bool) -> None:
        if self.zip is not None:
            with self.zip.open(self.base + rel) as r, open(out, "wb") as w:
                shutil.copyfileobj(r, w)
            return
        source = os.path.join(self.base, rel)
        if link:
            try:
                os.link(source, out)  # no extra disk space; falls back to a copy across file systems
                return
            except OSError:
                pass
        shutil.copyfile(source, out)


def prepare_tinyimagenet(src: str, dest: str, *, link: bool = True) -> PrepareReport:
    """train/<wnid>/images/*.JPEG -> DEST/train/<wnid>/; val/images + val_annotations.txt -> DEST/test/<wnid>/.

    The official test/ split has no labels, so val/ becomes our test split (the usual practice)."""
    tree = _Tree(src)
    train = [f.split("/") for f in tree.files if f.startswith("train/")]
    train = [p for p in train if len(p) == 4 and p[2] == "images" and is_image(p[3])]
    classes = sorted({p[1] for p in train})
    if not classes:
        raise UserError(f"--src {src} has no train/<wnid>/images/*.JPEG files; re-download tiny-imagenet-200")
    present = set(tree.files)
    val: list[tuple[str, str]] = []
    for number, line in enumerate(tree.read_text("val/val_annotations.txt").splitlines(), 1):
        fields = line.strip().split("\t")
        if not line.strip():
            continue
        if len(fields) < 2 or fields[1] not in classes or f"val/images/{fields[0]}" not in present:
            raise UserError(f"val/val_annotations.txt line {number} ({line.strip()[:60]!r}) names a missing image "
                            "or an unknown class; re-download tiny-imagenet-200")
        val.append((fields[0], fields[1]))
    with _Staging(dest) as stage:
        for _, wnid, _, name in sorted(train):
            tree.place(f"train/{wnid}/images/{name}", stage.file("train", wnid, name), link)
        for name, wnid in sorted(val):
            tree.place(f"val/images/{name}", stage.file("test", wnid, name), link)
    return PrepareReport("tinyimagenet", stage.dest, len(classes), len(train), len(val))


# ---------------------------------------------------------------- FaceScrub

def _identity_folders(src: str) -> dict[str, list[str]]:
    """identity -> image paths, from SRC/<person>/ or SRC/{actors,actresses}/<person>/ (also .../faces/<person>/
    and the actor_faces/, actress_faces/ spelling), where a person's images may sit in a faces/ sub-folder."""
    groups = [os.path.join(src, g) for g in ("actors", "actresses", "actor_faces", "actress_faces")
              if os.path.isdir(os.path.join(src, g))]
    out: dict[str, list[str]] = {}
    for group in groups or [src]:
        if os.path.isdir(os.path.join(group, "faces")) and not any(
                is_image(f) for f in os.listdir(os.path.join(group, "faces"))):
            group = os.path.join(group, "faces")
        for person in sorted(os.listdir(group)):
            folder = os.path.join(group, person)
            if person.startswith(".") or not os.path.isdir(folder):
                continue
            if os.path.isdir(os.path.join(folder, "faces")):
                folder = os.path.join(folder, "faces")
            files = [os.path.join(folder, f) for f in os.listdir(folder) if is_image(f)]
            if files:
                out.setdefault(person, []).extend(files)
    return out


def split_identity(files: list[str], identity: str, seed: int, test_fraction: float) -> tuple[list[str], list[str]]:
    """Deterministic train/test split of one identity: sorted names, shuffled by a seed that also depends on the
    identity (adding a person never changes another's split); at least one image on each side when possible."""
    order = sorted(files, key=os.path.basename)
    random.Random(f"facescrub:{seed}:{identity}").shuffle(order)
    n_test = round(len(order) * test_fraction)
    n_test = min(max(n_test, 1), len(order) - 1) if len(order) >= 2 else 0
    test = set(order[:n_test])
    return sorted(f for f in files if f not in test), sorted(test)


def _load_face(path: str, size: int) -> Optional[Image.Image]:
    try:
        with Image.open(path) as im:
            return to_square(im.convert("RGB"), size)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        # The FaceScrub downloaders save dead links' HTML pages as images; leaving them out is expected.
        log.debug("skipping unreadable %s: %s", path, exc)
        return None


def prepare_facescrub(src: str, dest: str, *, seed: int = 0, test_fraction: float = 0.2,
                      size: int = 48) -> PrepareReport:
    """Per-person folders -> DEST/{train,test}/<person>/*.png at size x size, 80/20 per identity, plus stats.json
    (train mean/std) so loading does not have to measure them again."""
    src = os.path.expanduser(src)
    if not os.path.isdir(src):
        raise UserError(f"--src {src} is not a folder; pass the folder holding one image folder per person")
    if not 0.0 < test_fraction < 1.0:
        raise UserError(f"test_fraction must be in (0, 1), got {test_fraction}")
    people = _identity_folders(src)
    if not people:
        raise UserError(f"--src {src} has no per-person image folders; expected {src}/<person>/*.jpg "
                        "(optionally under actors/ and actresses/)")
    total, squares = np.zeros(3), np.zeros(3)
    counts = {"train": 0, "test": 0}
    skipped = pixels = classes = 0
    with _Staging(dest) as stage:
        for person in sorted(people):
            faces = [(f, _load_face(f, size)) for f in sorted(people[person])]
            skipped += sum(face is None for _, face in faces)
            good = {f: face for f, face in faces if face is not None}
            if not good:
                continue
            classes += 1
            train, test = split_identity(list(good), person, seed, test_fraction)
            for split, files in (("train", train), ("test", test)):
                used: set[str] = set()
                for f in files:
                    stem = os.path.splitext(os.path.basename(f))[0]
                    name, k = stem, 1
                    while name in used:  # a.jpg and a.png of one person
                        name, k = f"{stem}_{k}", k + 1
                    used.add(name)
                    good[f].save(stage.file(split, person, name + ".png"))
                    if split == "train":
                        x = np.asarray(good[f], dtype=np.float64).reshape(-1, 3) / 255.0
                        total += x.sum(0)
                        squares += np.square(x).sum(0)
                        pixels += len(x)
                counts[split] += len(files)
        if not counts["train"]:
            raise UserError(f"--src {src}: none of the images could be decoded; check the download")
        mean = total / pixels
        std = np.sqrt(np.maximum(squares / pixels - mean ** 2, 1e-12))
        with open(os.path.join(stage.path, "stats.json"), "w", encoding="utf-8") as fh:
            json.dump({"mean": [round(float(v), 4) for v in mean], "std": [round(float(v), 4) for v in std],
                       "seed": seed, "test_fraction": test_fraction}, fh)
    if skipped:
        log.warning("skipped %d unreadable images (dead-link downloads are common in FaceScrub)", skipped)
    return PrepareReport("facescrub", stage.dest, classes, counts["train"], counts["test"], skipped)


PREPARERS: dict[str, Callable[..., PrepareReport]] = {
    "tinyimagenet": prepare_tinyimagenet,
    "facescrub": prepare_facescrub,
}
