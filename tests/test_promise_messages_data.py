"""What the data layer tells the user: each refusal names the problem and the fix, each list of what was
not read says why, and each summary line counts what it says it counts.

Messages are promises: a message that lost its path, its reason or its numbers would still be "an
error", so these tests read the words a user reads. Tiny synthetic inputs only (a few 8x8 PNGs).
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aperture_zoo.data import DataError, Split, load_split, subset
from aperture_zoo.datasets import load_dataset, read_cifar100
from aperture_zoo.folder import FolderError, decode_files, load_folder, scan_folder
from aperture_zoo.images import ImageError, load_image
from aperture_zoo.manifest import Manifest
from cifar_synth import write_cifar10


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APERTURE_DATA", str(tmp_path / "default-data"))  # empty: nothing is found there


def _write(root: Path, counts: dict[str, int]) -> Path:
    """``root/<class>/<k>.png``: 8x8 solid images, each its own colour."""
    for c, (name, n) in enumerate(counts.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for k in range(n):
            Image.new("RGB", (8, 8), (10 * c + 5, 5 * k + 3, 0)).save(root / name / f"{k:03d}.png")
    return root


# --------------------------------------------------------------------------- refusals: problem and fix


def _a_file_as_dataset(tmp: Path) -> tuple[object, list[str]]:
    path = tmp / "images.zip"
    path.write_bytes(b"PK")
    return lambda: scan_folder(path), [repr(str(path)), "is a file", "pass a folder of class folders"]


def _cifar100_split(tmp: Path) -> tuple[object, list[str]]:
    return lambda: read_cifar100(tmp, "val"), ["'val'", "split must be 'train' or 'test'"]


def _missing_image(tmp: Path) -> tuple[object, list[str]]:
    path = tmp / "nowhere" / "cat.png"
    return lambda: load_image(path), [f"{str(path)!r} does not exist; check the path"]


def _cifar10_batch_of_other_rows(tmp: Path) -> tuple[object, list[str]]:
    root = write_cifar10(tmp / "cifar", n_train_per_class=1, n_test_per_class=1)
    batch = root / "cifar-10-batches-py" / "data_batch_1"
    with open(batch, "wb") as f:  # rows of 100 values: not 32x32x3 pixels
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f, protocol=2)
    return lambda: load_split("train", root), [repr(str(batch)), "expected N x 3072 uint8 rows",
                                               "the file is not a CIFAR-10 batch"]


def _cifar10_batch_of_more_labels(tmp: Path) -> tuple[object, list[str]]:
    root = write_cifar10(tmp / "cifar", n_train_per_class=1, n_test_per_class=1)
    batch = root / "cifar-10-batches-py" / "data_batch_1"
    with open(batch, "wb") as f:  # 2 images, 3 labels
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1, 2]}, f, protocol=2)
    return lambda: load_split("train", root), [repr(str(batch)), "2 images but 3 labels"]


def _cifar100_file_of_other_rows(tmp: Path) -> tuple[object, list[str]]:
    path = tmp / "train"
    with open(path, "wb") as f:  # rows of 100 values: not 32x32x3 pixels
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"fine_labels": [0, 1]}, f, protocol=2)
    refused = f"{str(path)!r}: expected N x 3072 uint8 rows of pixels, got (2, 100); the file is not a CIFAR-100 file"
    return lambda: read_cifar100(tmp, "train"), [refused]


@pytest.mark.parametrize("case", [_a_file_as_dataset, _cifar100_split, _missing_image, _cifar10_batch_of_other_rows,
                                  _cifar10_batch_of_more_labels, _cifar100_file_of_other_rows],
                         ids=lambda c: c.__name__.strip("_"))
def test_a_refused_input_is_named_with_the_problem_and_the_fix(tmp_path: Path, case) -> None:
    call, words = case(tmp_path)
    with pytest.raises((FolderError, ValueError, ImageError, DataError)) as info:
        call()
    message = str(info.value)
    for word in words:
        assert word in message, (word, message)


def test_a_path_that_is_not_a_regular_file_is_not_decoded_and_says_so(tmp_path: Path) -> None:
    folder = tmp_path / "not-an-image.png"
    folder.mkdir()
    images, reasons = decode_files([str(folder)])
    assert reasons[0] is not None
    assert reasons[0].startswith(f"not a decodable image (image {str(folder)!r} is not a regular")
    assert not images.any()


# --------------------------------------------------------------------------- what a folder scan does not read


def test_hidden_files_and_symlink_loops_inside_a_class_are_named_with_why(tmp_path: Path) -> None:
    root = _write(tmp_path / "pool", {"a": 2, "b": 2})
    (root / "a" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "b" / "again").symlink_to(".", target_is_directory=True)  # b/again/ is b/ itself
    scan = scan_folder(root)
    assert ("a/.DS_Store", "hidden or system file (a dot file, __MACOSX)") in scan.ignored
    assert dict(scan.skipped)["b/again"] == "symlink loop (this folder is already part of the walk)"
    assert sorted(f.relpath for f in scan.files) == ["a/000.png", "a/001.png", "b/000.png", "b/001.png"]


def test_a_train_folder_without_test_is_one_pool_of_its_classes(tmp_path: Path) -> None:
    root = _write(tmp_path / "ds" / "train", {"cat": 2, "dog": 3}).parent
    scan = scan_folder(root)
    assert scan.layout == "pool" and scan.classes == ("cat", "dog") and scan.test_dir is None
    assert sorted(f.relpath for f in scan.files) == [f"train/cat/00{k}.png" for k in range(2)] + \
        [f"train/dog/00{k}.png" for k in range(3)]
    assert {f.split for f in scan.files} == {"pool"}


# --------------------------------------------------------------------------- what a folder load says


def test_the_first_load_says_what_it_decodes_and_the_second_is_from_the_cache(tmp_path: Path) -> None:
    root = _write(tmp_path / "pool", {"a": 2, "b": 2})
    said: list[str] = []
    first = load_folder(root, say=said.append)
    assert said == [f"decoding 4 images of {str(root.resolve())!r} to 32x32 (once; cached for later runs)"]
    assert first.from_cache is False and first.cache_file is not None
    again = load_folder(root, say=said.append)
    assert again.from_cache is True and len(said) == 1  # nothing decoded, nothing said


# --------------------------------------------------------------------------- what --resume says changed


def _entries(counts: dict[str, int], sha: str = "0") -> list[tuple[str, str, str]]:
    return [(f"{folder}/{k}.png", folder, sha) for folder, n in counts.items() for k in range(n)]


@pytest.mark.parametrize("old, new, said", [
    ([], _entries({"a": 2, "b": 1}), "3 files added under a/ (2), b/ (1)"),
    ([], _entries({"a": 5, "b": 4, "c": 3, "d": 2, "e": 1}),
     "15 files added under a/ (5), b/ (4), c/ (3) and 2 more folders"),
    (_entries({"a": 3}), _entries({"a": 3}, sha="1"), "3 changed: a/0.png, a/1.png, a/2.png"),
    (_entries({"a": 4}), _entries({"a": 4}, sha="1"), "4 changed: a/0.png, a/1.png, a/2.png and 1 more"),
], ids=["two-folders", "five-folders", "three-changed", "four-changed"])
def test_what_changed_in_a_folder_is_counted_in_one_line(old, new, said: str) -> None:
    assert Manifest.of(new).changes_from(Manifest.of(old)) == said


# --------------------------------------------------------------------------- where data is read from, and how much


def test_cifar10_is_read_from_the_data_dir_given(synthetic_cifar: Path) -> None:
    ds = load_dataset("cifar10", data_dir=synthetic_cifar)  # $APERTURE_DATA is an empty folder here
    assert (len(ds.train), len(ds.test)) == (500, 200)
    assert np.bincount(ds.train.labels).tolist() == [50] * 10


def test_a_subset_of_one_image_is_one_image_of_the_split() -> None:
    labels = np.repeat(np.arange(3), 4)
    split = Split(np.arange(12, dtype=np.uint8).repeat(3 * 32 * 32).reshape(12, 3, 32, 32), labels, ("a", "b", "c"))
    one = subset(split, 1, seed=3)
    assert len(one) == 1
    i = int(one.images[0, 0, 0, 0])  # each image is filled with its index
    assert one.labels[0] == labels[i]


@pytest.mark.parametrize("dataset, refused", [(None, False), ("cifar10", False), ("cifar100", False),
                                              ("FOLDER", True)])
def test_data_dir_is_refused_only_for_a_run_on_an_image_folder(tmp_path: Path, dataset, refused: bool) -> None:
    """--data-dir is where CIFAR is read from: a folder run reads none, and ignoring it would mislead."""
    from aperture_zoo.train.settings import TrainConfig, TrainingError, with_run_options

    folder = tmp_path / "my images"
    cfg = TrainConfig(model="resnet10", data_dir=tmp_path / "cifar",
                      dataset=str(folder) if dataset == "FOLDER" else dataset)
    if refused:
        with pytest.raises(TrainingError) as info:
            with_run_options(cfg)
        assert repr(str(folder.resolve())) in str(info.value) and "drop --data-dir" in str(info.value)
    else:
        assert os.fspath(with_run_options(cfg).data_dir) == str(tmp_path / "cifar")
