from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from aperture_zoo.data import DataError, find_batches_dir, load_split, stratified_indices, subset


def test_reads_synthetic_batches(synthetic_cifar: Path) -> None:
    train = load_split("train", synthetic_cifar)
    test = load_split("test", synthetic_cifar / "cifar-10-batches-py")  # the folder itself works too
    assert train.images.shape == (500, 3, 32, 32) and train.images.dtype == np.uint8
    assert test.images.shape == (200, 3, 32, 32)
    assert np.bincount(train.labels).tolist() == [50] * 10
    assert train.classes[0] == "airplane" and len(train.classes) == 10


def test_missing_data_says_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"CIFAR-10 not found.*--data-dir.*--download"):
        load_split("train", tmp_path)


def test_missing_batch_and_corrupt_batch(synthetic_cifar: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "cifar-10-batches-py"
    shutil.copytree(synthetic_cifar / "cifar-10-batches-py", copy)
    (copy / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3.*missing"):
        load_split("train", tmp_path)
    (copy / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="corrupt"):
        load_split("test", tmp_path)


def test_batches_are_read_without_running_code(synthetic_cifar: Path, tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": []}))

    class Boom:
        def __reduce__(self):
            return (Path(tmp_path / "pwned").touch, ())

    (folder / "test_batch").write_bytes(pickle.dumps({"data": Boom(), "labels": []}))
    with pytest.raises(DataError, match="refusing to load"):
        load_split("test", tmp_path)
    assert not (tmp_path / "pwned").exists()


def test_stratified_subset_is_balanced_and_not_a_prefix(synthetic_cifar: Path) -> None:
    train = load_split("train", synthetic_cifar)
    small = subset(train, 100, seed=3)
    assert np.bincount(small.labels, minlength=10).tolist() == [10] * 10
    again = stratified_indices(train.labels, 100, seed=3)
    assert np.array_equal(again, stratified_indices(train.labels, 100, seed=3))
    assert not np.array_equal(np.sort(again), np.arange(100))
    with pytest.raises(ValueError, match="subset size"):
        stratified_indices(train.labels, 0)


def test_find_batches_dir_rejects_wrong_folder(tmp_path: Path) -> None:
    (tmp_path / "something.txt").write_text("x")
    with pytest.raises(DataError, match=str(tmp_path)):
        find_batches_dir(tmp_path)


def test_real_cifar10_counts_and_mean(real_cifar: Path) -> None:
    train, test = load_split("train", real_cifar), load_split("test", real_cifar)
    assert len(train) == 50_000 and len(test) == 10_000
    assert np.bincount(train.labels).tolist() == [5000] * 10
    assert np.bincount(test.labels).tolist() == [1000] * 10
    mean = train.images.reshape(50_000, 3, -1).mean(axis=(0, 2)) / 255
    np.testing.assert_allclose(mean, [0.4914, 0.4822, 0.4465], atol=5e-4)
