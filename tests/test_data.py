from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from aperture_zoo import data
from aperture_zoo.data import DataError, SubsetError, find_batches_dir, load_split, stratified_indices, subset


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
    with pytest.raises(SubsetError, match=r"1\.\.500 .* got 501"):  # never silently "all of it"
        subset(train, 501)
    assert subset(train, 500) is train
    uneven = subset(train, 25, seed=0)  # 25 = 2 per class + 5 classes with one more
    assert sorted(np.bincount(uneven.labels, minlength=10).tolist()) == [2] * 5 + [3] * 5


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


def _fake_torchvision_download(monkeypatch: pytest.MonkeyPatch, action) -> list[dict]:
    """Replace torchvision's downloader (what data.download calls) with ``action``; record the calls."""
    import socket

    import torchvision.datasets.utils as tv_utils

    calls: list[dict] = []

    def fake(url: str, download_root: str, md5: str | None = None, **kw) -> None:
        calls.append({"url": url, "root": download_root, "md5": md5, "timeout": socket.getdefaulttimeout()})
        action(Path(download_root))

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", fake)
    return calls


def test_missing_data_is_downloaded_from_the_official_archive_with_its_md5(
        synthetic_cifar: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil
    import socket

    def extract(root: Path) -> None:  # what a successful download + extraction leaves behind
        shutil.copytree(synthetic_cifar / "cifar-10-batches-py", root / "cifar-10-batches-py")

    calls = _fake_torchvision_download(monkeypatch, extract)
    before = socket.getdefaulttimeout()
    train = load_split("train", tmp_path / "cache", download_if_missing=True)
    assert len(train) == 500
    assert calls == [{"url": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "root": str(tmp_path / "cache"),
                      "md5": "c58f30108f718f92721af3b95e74349a", "timeout": data.DOWNLOAD_TIMEOUT_S}]
    assert socket.getdefaulttimeout() == before  # the bounded timeout does not leak
    load_split("test", tmp_path / "cache", download_if_missing=True)
    assert len(calls) == 1  # present now: never downloaded twice


def test_offline_download_says_how_to_point_at_a_local_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import urllib.error

    def offline(root: Path) -> None:
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    calls = _fake_torchvision_download(monkeypatch, offline)
    with pytest.raises(DataError, match=r"downloading it from https://www\.cs\.toronto\.edu.* failed "
                                        r"\(.*Name or service not known.*offline.*--data-dir.*APERTURE_DATA"):
        load_split("train", tmp_path, download_if_missing=True)
    assert len(calls) == 1
    with pytest.raises(DataError, match="CIFAR-10 not found"):
        load_split("train", tmp_path)  # download_if_missing=False never touches the network
    assert len(calls) == 1


def test_default_data_dir_is_aperture_data_then_the_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("APERTURE_DATA", str(tmp_path / "d"))
    assert data.default_data_dir() == tmp_path / "d"
    monkeypatch.delenv("APERTURE_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "c"))
    assert data.default_data_dir() == tmp_path / "c" / "aperture_zoo"
