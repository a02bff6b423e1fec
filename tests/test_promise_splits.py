"""The README's promises about image folders and their splits, checked on what a user gets back.

"Class names are the folder names, sorted, exactly as written. ``DIR/train/`` with ``DIR/test/``
(or ``DIR/val/``) is used as given; otherwise 20 % of each class is held out for testing with the
seed (``--test-split 0.1`` changes the share), and ``run.json`` and the weights record how."
"``eval`` and ``export`` use the dataset the weights were trained on (its held-out test images)."
The cache is "keyed by file names, sizes and modification times".

Each image here is one solid colour that names it (red: class, green: index), so a split's
contents can be read back from its pixels.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aperture_zoo.datasets import DatasetNotGivenError, dataset_for_weights, load_dataset
from aperture_zoo.folder import load_folder
from aperture_zoo.weights import decode_metadata, read_metadata


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APERTURE_DATA", str(tmp_path / "data-cache"))


def _write(root: Path, counts: dict[str, int], tag: int = 0) -> Path:
    """``root/<class>/<k>.png``: 8x8 solid images coloured (class number, k, tag)."""
    for c, (name, n) in enumerate(counts.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for k in range(n):
            Image.new("RGB", (8, 8), (10 * c + 5, 5 * k + 3, tag)).save(root / name / f"{k:03d}.png")
    return root


def _ids(images: np.ndarray) -> set[tuple[int, int, int]]:
    """The colour of each image (every pixel of a solid image has it)."""
    return {tuple(int(v) for v in img[:, 0, 0]) for img in images}


def test_the_hold_out_is_a_share_of_every_class_rounded(tmp_path: Path) -> None:
    counts = {"a": 20, "b": 10, "c": 5, "d": 2}
    root = _write(tmp_path / "pool", counts)
    ds = load_dataset(str(root))  # the default share: 20 % of each class
    classes = list(ds.classes)
    per_class_test = {n: int((ds.test.labels == classes.index(n)).sum()) for n in counts}
    per_class_train = {n: int((ds.train.labels == classes.index(n)).sum()) for n in counts}
    # round(0.2 * n), at least one held out and one kept for a class of two or more
    assert per_class_test == {"a": 4, "b": 2, "c": 1, "d": 1}
    assert per_class_train == {"a": 16, "b": 8, "c": 4, "d": 1}
    assert ds.record["test_split"] == 0.2 and ds.record["split_seed"] == 0
    assert ds.record["train_images"] == 29 and ds.record["test_images"] == 8
    # the two splits are disjoint and hold every image once, each in its own class
    train_ids, test_ids = _ids(ds.train.images), _ids(ds.test.images)
    assert not train_ids & test_ids and len(train_ids | test_ids) == sum(counts.values())
    for split in (ds.train, ds.test):
        for img, label in zip(split.images, split.labels):
            assert (int(img[0, 0, 0]) - 5) // 10 == list(counts).index(classes[label])

    tenth = load_dataset(str(root), test_split=0.1, seed=0)  # --test-split 0.1
    assert {n: int((tenth.test.labels == classes.index(n)).sum()) for n in counts} == {"a": 2, "b": 1, "c": 1, "d": 1}
    half = load_dataset(str(root), test_split=0.5, seed=0)
    assert {n: int((half.test.labels == classes.index(n)).sum()) for n in counts} == {"a": 10, "b": 5, "c": 2, "d": 1}


def test_the_seed_chooses_which_images_are_held_out(tmp_path: Path) -> None:
    root = _write(tmp_path / "pool", {"a": 20, "b": 20})
    seed0, again, seed1 = (load_dataset(str(root), seed=s) for s in (0, 0, 1))
    assert _ids(seed0.test.images) == _ids(again.test.images)
    assert _ids(seed0.test.images) != _ids(seed1.test.images)
    assert seed1.record["split_seed"] == 1


def test_test_is_used_over_val_when_both_are_there(tmp_path: Path) -> None:
    _write(tmp_path / "d" / "train", {"a": 3, "b": 3}, tag=0)
    _write(tmp_path / "d" / "test", {"a": 2, "b": 2}, tag=100)
    _write(tmp_path / "d" / "val", {"a": 1, "b": 1}, tag=200)
    ds = load_dataset(str(tmp_path / "d"))
    assert ds.record["test_dir"] == "test" and ds.record["layout"] == "split"
    assert len(ds.train) == 6 and len(ds.test) == 4
    assert {c[2] for c in _ids(ds.test.images)} == {100} and {c[2] for c in _ids(ds.train.images)} == {0}
    (ignored,) = ds.report.ignored  # val/ is not read, and the data report says so and why; train/ and test/ are read
    assert ignored[0] == "val" and ignored[1].startswith("a second test folder (test/ is the test split")
    only_val = tmp_path / "e"
    _write(only_val / "train", {"a": 3, "b": 3})
    _write(only_val / "val", {"a": 1, "b": 1}, tag=200)
    ds = load_dataset(str(only_val))
    assert ds.record["test_dir"] == "val" and {c[2] for c in _ids(ds.test.images)} == {200}
    assert ds.report.ignored == []


def test_class_names_are_the_folder_names_sorted_exactly_as_written(tmp_path: Path) -> None:
    names = ["apple", "Zebra", "Mango", "banana", "Äpfel", "a b"]
    root = _write(tmp_path / "pool", {n: 3 for n in names})
    ds = load_dataset(str(root))
    # sorted by code point, case and all: upper case before lower case, not "apple, banana, Mango, ..."
    assert list(ds.classes) == ["Mango", "Zebra", "a b", "apple", "banana", "Äpfel"]
    assert ds.record["classes"] == list(ds.classes)
    for split in (ds.train, ds.test):  # each image carries the label of the folder it came from
        for img, label in zip(split.images, split.labels):
            assert names[(int(img[0, 0, 0]) - 5) // 10] == ds.classes[label]


def test_eval_scores_the_images_the_runs_seed_held_out(tmp_path: Path) -> None:
    """The weights record the split (share and seed); eval and export take the same held-out images."""
    from hub_fixtures import random_weights

    root = _write(tmp_path / "pool", {"a": 15, "b": 15, "c": 15})
    run = load_dataset(str(root), test_split=0.3, seed=7)
    weights = random_weights(tmp_path / "run" / "model.safetensors", "resnet10",
                             dataset=run.name, data=run.record)
    meta = decode_metadata(read_metadata(weights))  # what `aperture eval --weights` reads
    with pytest.raises(DatasetNotGivenError) as info:  # a folder named in a weights file is never read
        dataset_for_weights(None, None, False, meta)
    assert "(3 classes: a, b, c; recorded as " in str(info.value)  # the user is told which folder to pass
    used = dataset_for_weights(str(root), None, False, meta)  # the user passes it; the split comes from the weights
    assert used is not None
    assert _ids(used.test.images) == _ids(run.test.images)
    assert not _ids(used.test.images) & _ids(run.train.images)  # never an image the run trained on
    assert _ids(used.test.images) != _ids(load_dataset(str(root), test_split=0.3, seed=0).test.images)


def test_a_changed_file_is_decoded_again_even_with_its_old_modification_time(tmp_path: Path) -> None:
    root = _write(tmp_path / "pool", {"a": 3, "b": 3})
    first = load_folder(root)
    assert not first.from_cache and load_folder(root).from_cache
    victim = root / "a" / "001.png"
    st = victim.stat()
    noise = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(noise).save(victim)  # other pixels, another size
    assert victim.stat().st_size != st.st_size
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))  # the old time: only the size tells
    again = load_folder(root)
    assert not again.from_cache
    idx = [f.relpath for f in again.scan.files].index("a/001.png")
    assert not np.array_equal(again.images[idx], first.images[idx])  # the new pixels, not the cached ones
    others = [i for i in range(len(first.images)) if i != idx]
    assert np.array_equal(again.images[others], first.images[others])


def test_weights_trained_on_train_and_test_folders_are_scored_on_that_test_folder(tmp_path: Path) -> None:
    """A run on DIR/train/ + DIR/test/ records its layout: eval of its weights on that folder scores test/, as given."""
    root = tmp_path / "given"
    _write(root / "train", {"a": 3, "b": 3})
    _write(root / "test", {"a": 2, "b": 2}, tag=9)
    run = load_dataset(str(root))
    meta = {"dataset": run.name, "data": run.record}  # what the weights of that run carry
    assert run.record["layout"] == "split"
    used = dataset_for_weights(str(root), None, False, meta)
    assert used is not None and used.record["layout"] == "split"
    assert _ids(used.test.images) == _ids(run.test.images) and {c[2] for c in _ids(used.test.images)} == {9}
