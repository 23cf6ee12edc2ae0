"""On-disk formats: CIFAR pickles, image folders, TinyImageNet/FaceScrub preparation, and their error messages."""
from __future__ import annotations

import json
import os
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from splitshield.cli.main import main
from splitshield.config import DataConfig
from splitshield.data import DATASETS, build_data
from splitshield.data.cifar import load_pickle
from splitshield.data.folders import channel_stats, nearest_size
from splitshield.data.prepare import prepare_facescrub, prepare_tinyimagenet, split_identity
from splitshield.errors import DatasetNotFound, UserError


@pytest.fixture(autouse=True)
def no_default_data(tmp_path, monkeypatch):
    """Keep the developer's real ~/.cache/splitshield and $SPLITSHIELD_DATA out of these tests."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SPLITSHIELD_DATA", str(tmp_path / "no-data"))


# ---------------------------------------------------------------- CIFAR

class Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Writes bytes and str the way Python 2 wrote str (BINSTRING), as in the official CIFAR files; with
    encoding="bytes" even numpy's own dtype arguments then come back as bytes, as they do from the real files."""

    dispatch = dict(pickle._Pickler.dispatch)  # type: ignore[attr-defined]

    def save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    def save_ascii_str(self, obj: str) -> None:
        self.save_py2_str(obj.encode("ascii"))

    dispatch[bytes] = save_py2_str
    dispatch[str] = save_ascii_str


def write_pickle(path, obj, py2: bool = False) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if py2:
        with open(path, "wb") as fh:
            Py2Pickler(fh, protocol=2).dump(obj)
        # numpy 1.x (which wrote the real files) named the module numpy.core.multiarray.
        with open(path, "rb") as fh:
            data = fh.read().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
        with open(path, "wb") as fh:
            fh.write(data)
    else:
        with open(path, "wb") as fh:
            pickle.dump(obj, fh, protocol=4)


def make_cifar10(root, per_batch: int = 2, names=None, py2: bool = False) -> dict:
    rng = np.random.default_rng(0)
    folder = os.path.join(root, "cifar-10-batches-py")
    out = {"train": ([], []), "test": ([], [])}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=per_batch)]
        write_pickle(os.path.join(folder, name), {b"batch_label": b"x", b"data": data, b"labels": labels}, py2)
        split = "test" if name == "test_batch" else "train"
        out[split][0].append(data)
        out[split][1].extend(labels)
    if names is not None:
        write_pickle(os.path.join(folder, "batches.meta"),
                     {b"label_names": [n.encode() for n in names], b"num_vis": 3072}, py2)
    return {k: (np.concatenate(v[0]), np.array(v[1])) for k, v in out.items()}


@pytest.mark.parametrize("py2", [False, True], ids=["py3-pickle", "py2-style-pickle"])
def test_cifar10_pickles_read_back_exactly_through_build_data(tmp_path, py2: bool) -> None:
    names = [f"class{i}" for i in range(10)][::-1]  # not the standard names: proves batches.meta is read
    data = make_cifar10(str(tmp_path / "c10"), names=names, py2=py2)
    bundle = build_data(DataConfig(name="cifar10", root=str(tmp_path / "c10"), batch_size=4, download=False), 0)
    assert len(bundle.train) == 10 and len(bundle.test) == 2
    assert bundle.info.class_names == tuple(names) and bundle.info.input_shape == (3, 32, 32)
    assert bundle.info.crop_padding == 4 and bundle.info.hflip and bundle.info.rotation == 15
    for split, ds in (("train", bundle.train), ("test", bundle.test)):
        rows, labels = data[split]
        for i in range(len(rows)):
            image, label = ds[i]
            assert image.dtype == torch.uint8 and int(label) == labels[i]
            # Row layout: 1024 red, then green, then blue values, each a row-major 32x32 plane.
            for c in range(3):
                assert np.array_equal(image[c].numpy(), rows[i, c * 1024:(c + 1) * 1024].reshape(32, 32))


def test_cifar10_root_may_be_the_batches_folder_and_meta_is_optional(tmp_path) -> None:
    data = make_cifar10(str(tmp_path))
    source = DATASETS.get("cifar10")(root=str(tmp_path / "cifar-10-batches-py"), download=False)
    assert source.dataset_info().class_names[0] == "airplane"
    assert torch.equal(source.load("test").labels, torch.from_numpy(data["test"][1]))


def test_cifar100_fine_labels_and_names(tmp_path) -> None:
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-100-python"
    rows = {s: rng.integers(0, 256, size=(n, 3072), dtype=np.uint8) for s, n in (("train", 5), ("test", 3))}
    fine = {"train": [0, 99, 5, 42, 7], "test": [3, 98, 1]}
    for split in ("train", "test"):
        write_pickle(str(folder / split), {b"data": rows[split], b"fine_labels": fine[split],
                                           b"coarse_labels": [0] * len(fine[split])})
    fine_names = [f"fine{i}" for i in range(100)]
    write_pickle(str(folder / "meta"), {b"fine_label_names": [n.encode() for n in fine_names],
                                        b"coarse_label_names": [b"c"] * 20})
    bundle = build_data(DataConfig(name="cifar100", root=str(tmp_path), download=False), 0)
    assert bundle.info.num_classes == 100 and bundle.info.class_names == tuple(fine_names)
    assert [int(bundle.train[i][1]) for i in range(5)] == fine["train"]
    assert np.array_equal(bundle.test[2][0].numpy().reshape(-1), rows["test"][2])


def test_truncated_or_garbage_cifar_batch_is_a_one_line_user_error(tmp_path) -> None:
    make_cifar10(str(tmp_path))
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(path.read_bytes()[:-500])
    cfg = DataConfig(name="cifar10", root=str(tmp_path), download=False)
    with pytest.raises(UserError, match="test_batch is truncated or corrupt") as info:
        build_data(cfg, 0)
    assert "\n" not in str(info.value)
    path.write_bytes(b"<html>not a pickle</html>")
    with pytest.raises(UserError, match="test_batch") as info:
        build_data(cfg, 0)
    assert "\n" not in str(info.value)
    write_pickle(str(path), {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]})
    with pytest.raises(UserError, match=r"shape \(N, 3072\)"):
        build_data(cfg, 0)
    write_pickle(str(path), {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]})
    with pytest.raises(UserError, match="labels outside"):
        build_data(cfg, 0)


class Evil:
    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (os.remove, (self.target,))


def test_pickle_with_a_disallowed_global_is_refused_without_running_it(tmp_path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("still here")
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    write_pickle(str(path), {b"data": Evil(str(victim)), b"labels": []})
    with pytest.raises(UserError, match="refusing to load global posix.remove|refusing to load global os.remove"):
        load_pickle(str(path))
    assert victim.read_text() == "still here"
    with pytest.raises(UserError, match="refusing"):
        DATASETS.get("cifar10")(root=str(tmp_path), download=False).load("test")


def test_incomplete_cifar_names_the_missing_file(tmp_path) -> None:
    make_cifar10(str(tmp_path))
    os.remove(tmp_path / "cifar-10-batches-py" / "data_batch_3")
    with pytest.raises(DatasetNotFound, match="data_batch_3 is missing"):
        DATASETS.get("cifar10")(root=str(tmp_path), download=False).load("train")


# ---------------------------------------------------------------- image folders

def write_images(folder, n: int, size=(32, 32), mode: str = "RGB", seed: int = 0, ext: str = "png") -> list:
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = []
    for i in range(n):
        shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
        a = rng.integers(0, 256, size=shape, dtype=np.uint8)
        Image.fromarray(a, mode).save(os.path.join(folder, f"img{i:02d}.{ext}"))
        arrays.append(a)
    return arrays


def test_imagefolder_round_trip_is_pixel_exact_with_measured_stats(tmp_path) -> None:
    made = {}
    for split, dirname, n in (("train", "train", 3), ("test", "val", 2)):
        for k, cls in enumerate(("dog", "cat")):  # written out of order: classes must come back sorted
            made[(split, cls)] = write_images(tmp_path / dirname / cls, n, seed=10 * k + n)
    bundle = build_data(DataConfig(name="imagefolder", root=str(tmp_path), batch_size=2), 0)
    info = bundle.info
    assert info.class_names == ("cat", "dog") and info.num_classes == 2 and info.input_shape == (3, 32, 32)
    assert len(bundle.train) == 6 and len(bundle.test) == 4
    expected = made[("train", "cat")] + made[("train", "dog")]
    for i, arr in enumerate(expected):
        image, label = bundle.train[i]
        assert np.array_equal(image.permute(1, 2, 0).numpy(), arr) and int(label) == (0 if i < 3 else 1)
    pixels = np.stack(expected).reshape(-1, 3) / 255.0
    assert np.allclose(info.mean, pixels.mean(0), atol=1e-4) and np.allclose(info.std, pixels.std(0), atol=1e-4)


def test_imagefolder_grayscale_and_resizing(tmp_path) -> None:
    gray = write_images(tmp_path / "g" / "train" / "a", 2, size=(28, 28), mode="L")
    write_images(tmp_path / "g" / "test" / "a", 1, size=(28, 28), mode="L")
    source = DATASETS.get("imagefolder")(root=str(tmp_path / "g"))
    assert source.dataset_info().input_shape == (1, 28, 28)
    assert np.array_equal(source.load("train").images[1, 0].numpy(), gray[1])
    write_images(tmp_path / "big" / "train" / "a", 2, size=(100, 60), ext="jpg")
    write_images(tmp_path / "big" / "test" / "a", 1, size=(60, 100), ext="JPEG")
    source = DATASETS.get("imagefolder")(root=str(tmp_path / "big"))
    assert source.dataset_info().input_shape == (3, 64, 64)  # shorter side 60 -> nearest of 28/32/48/64
    assert source.load("test").images.shape == (1, 3, 64, 64)
    assert [nearest_size(s) for s in (20, 30, 40, 56, 500)] == [28, 32, 48, 64, 64]


def test_imagefolder_rejects_test_only_classes_and_bad_images(tmp_path) -> None:
    write_images(tmp_path / "train" / "a", 1)
    write_images(tmp_path / "test" / "b", 1)
    with pytest.raises(UserError, match="class that train/ lacks"):
        DATASETS.get("imagefolder")(root=str(tmp_path)).dataset_info()
    os.rename(tmp_path / "test" / "b", tmp_path / "test" / "a")
    (tmp_path / "train" / "a" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match="cannot decode image .*broken.png"):
        DATASETS.get("imagefolder")(root=str(tmp_path)).load("train")


@pytest.mark.parametrize("name, fix", [
    ("imagefolder", "set data.root"),
    ("tinyimagenet", "splitshield prepare tinyimagenet"),
    ("facescrub", "splitshield prepare facescrub"),
    ("cifar10", "set data.root to the folder holding cifar-10-batches-py/"),
    ("cifar100", "cifar-100-python/"),
])
def test_missing_dataset_error_is_one_line_naming_the_fix(name: str, fix: str) -> None:
    with pytest.raises(DatasetNotFound, match="not found") as info:
        build_data(DataConfig(name=name, download=False), 0)
    assert fix in str(info.value) and "\n" not in str(info.value)


# ---------------------------------------------------------------- TinyImageNet

def make_tiny_tree(base) -> dict:
    """A 2-class tiny-imagenet-200 tree: 3 train JPEGs per class, 4 val JPEGs with annotations, unlabelled test."""
    rng = np.random.default_rng(3)
    labels = {}
    for wnid in ("n02", "n01"):
        folder = base / "train" / wnid / "images"
        folder.mkdir(parents=True)
        (base / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / f"{wnid}_{i}.JPEG")
    (base / "val" / "images").mkdir(parents=True)
    lines = []
    for i, wnid in enumerate(("n01", "n02", "n02", "n01")):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(base / "val" / "images" /
                                                                                  f"val_{i}.JPEG")
        lines.append(f"val_{i}.JPEG\t{wnid}\t0\t0\t63\t63")
        labels[f"val_{i}.JPEG"] = wnid
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    (base / "test" / "images").mkdir(parents=True)
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(base / "test" / "images" / "test_0.JPEG")
    (base / "wnids.txt").write_text("n01\nn02\n")
    return labels


@pytest.mark.parametrize("as_zip", [False, True], ids=["folder", "zip"])
def test_prepare_tinyimagenet_then_load_through_the_registry(tmp_path, as_zip: bool) -> None:
    base = tmp_path / "dl" / "tiny-imagenet-200"
    val_labels = make_tiny_tree(base)
    src = tmp_path / "dl"
    if as_zip:
        src = tmp_path / "tiny-imagenet-200.zip"
        with zipfile.ZipFile(src, "w") as zf:
            for folder, _, files in os.walk(base):
                for f in files:
                    full = os.path.join(folder, f)
                    zf.write(full, os.path.relpath(full, tmp_path / "dl"))
    dest = tmp_path / "prepared"
    report = prepare_tinyimagenet(str(src), str(dest))
    assert (report.classes, report.train, report.test) == (2, 6, 4)
    assert sorted(os.listdir(dest / "test" / "n01")) == ["val_0.JPEG", "val_3.JPEG"]
    assert not os.path.exists(dest / ".prepare-partial")
    if not as_zip:  # hard-linked, not copied
        assert os.stat(dest / "train" / "n01" / "n01_0.JPEG").st_ino == \
            os.stat(base / "train" / "n01" / "images" / "n01_0.JPEG").st_ino
    bundle = build_data(DataConfig(name="tinyimagenet", root=str(dest), batch_size=2), 0)
    assert bundle.info.class_names == ("n01", "n02") and bundle.info.num_classes == 2
    assert bundle.info.input_shape == (3, 64, 64) and bundle.info.hflip
    assert len(bundle.train) == 6 and len(bundle.test) == 4
    assert [int(bundle.test[i][1]) for i in range(4)] == [0, 0, 1, 1]
    with Image.open(base / "val" / "images" / "val_3.JPEG") as im:
        expected = np.asarray(im.convert("RGB"))
    assert np.array_equal(bundle.test[1][0].permute(1, 2, 0).numpy(), expected)
    with pytest.raises(UserError, match="not empty"):
        prepare_tinyimagenet(str(src), str(dest))


def test_prepare_tinyimagenet_rejects_bad_annotations(tmp_path) -> None:
    base = tmp_path / "tiny-imagenet-200"
    make_tiny_tree(base)
    with open(base / "val" / "val_annotations.txt", "a") as fh:
        fh.write("val_9.JPEG\tn01\t0\t0\t1\t1\n")
    with pytest.raises(UserError, match="line 5"):
        prepare_tinyimagenet(str(base), str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out" / "train")


# ---------------------------------------------------------------- FaceScrub

def make_faces(src) -> None:
    write_images(src / "actors" / "Aaron Eckhart" / "faces", 5, size=(80, 80), ext="jpg", seed=1)
    write_images(src / "actresses" / "Zoe Saldana", 6, size=(40, 50), ext="png", seed=2)
    (src / "actresses" / "Zoe Saldana" / "dead_link.jpg").write_bytes(b"<html>404</html>")


def test_prepare_facescrub_split_is_deterministic_and_disjoint(tmp_path) -> None:
    src = tmp_path / "facescrub"
    make_faces(src)
    reports = [prepare_facescrub(str(src), str(tmp_path / d), seed=0) for d in ("a", "b")]
    assert (reports[0].classes, reports[0].train, reports[0].test, reports[0].skipped) == (2, 9, 2, 1)

    def listing(root):
        return {os.path.relpath(os.path.join(d, f), root): Path(d, f).read_bytes()
                for d, _, files in os.walk(root) for f in files}

    a, b = listing(tmp_path / "a"), listing(tmp_path / "b")
    assert a == b  # same files, same bytes
    for person in ("Aaron Eckhart", "Zoe Saldana"):
        train = set(os.listdir(tmp_path / "a" / "train" / person))
        test = set(os.listdir(tmp_path / "a" / "test" / person))
        assert train and test and not train & test
    with Image.open(tmp_path / "a" / "test" / "Zoe Saldana" / sorted(test)[0]) as im:
        assert im.size == (48, 48)
    files = [f"f{i}.jpg" for i in range(10)]
    splits = {tuple(split_identity(files, "x", seed, 0.2)[1]) for seed in range(6)}
    assert len(splits) > 1 and all(len(s) == 2 for s in splits)

    bundle = build_data(DataConfig(name="facescrub", root=str(tmp_path / "a"), batch_size=4), 0)
    assert bundle.info.class_names == ("Aaron Eckhart", "Zoe Saldana") and bundle.info.input_shape == (3, 48, 48)
    stats = json.loads((tmp_path / "a" / "stats.json").read_text())
    mean, std = channel_stats(bundle.train.images)
    assert bundle.info.mean == tuple(stats["mean"]) and np.allclose(mean, stats["mean"], atol=2e-4)
    assert np.allclose(std, stats["std"], atol=2e-4)


def test_prepare_facescrub_without_people_is_a_user_error(tmp_path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no per-person image folders"):
        prepare_facescrub(str(tmp_path / "empty"), str(tmp_path / "out"))


# ---------------------------------------------------------------- CLI

@pytest.mark.parametrize("dataset", ["tinyimagenet", "facescrub"])
def test_prepare_cli_bad_src_exits_2_with_one_line(tmp_path, capsys, dataset: str) -> None:
    code = main(["prepare", dataset, "--src", str(tmp_path / "nope"), "--dest", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("splitshield: error: --src")


def test_prepare_cli_defaults_to_the_cache_dir_the_loader_reads(tmp_path, capsys) -> None:
    make_faces(tmp_path / "fs")
    assert main(["-q", "prepare", "facescrub", "--src", str(tmp_path / "fs")]) == 0
    assert "2 classes, 9 train / 2 test" in capsys.readouterr().out
    assert DATASETS.get("facescrub")().dataset_info().num_classes == 2  # found via $SPLITSHIELD_DATA, no root


# ---------------------------------------------------------------- real data (opt-in)

@pytest.mark.slow
@pytest.mark.parametrize("name, n_train, n_test", [("cifar10", 50000, 10000), ("cifar100", 50000, 10000)])
def test_real_cifar_if_present(monkeypatch, name: str, n_train: int, n_test: int) -> None:
    monkeypatch.undo()  # look in the real default locations
    source = DATASETS.get(name)(download=False)
    try:
        train, test = source.load("train"), source.load("test")
    except DatasetNotFound as exc:
        pytest.skip(str(exc))
    assert (len(train), len(test)) == (n_train, n_test) and train.images.shape[1:] == (3, 32, 32)
    mean, _ = channel_stats(train.images[:10000])
    assert np.allclose(mean, source.dataset_info().mean, atol=0.01)
