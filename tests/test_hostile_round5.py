"""Regressions of a hostile try: joins decided by content, the file's own facts both ways, metadata of any type."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from aperture_zoo.datasets import DatasetError, dataset_for_weights, load_dataset
from test_data_report import write_folder
from test_data_report import _cache_in_tmp  # noqa: F401 - the decode cache and weights in tmp

pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------- a folder's split follows its content


def test_a_copy_of_the_training_folder_at_another_path_gets_the_recorded_split(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "d", 8)
    trained = load_dataset(root, test_split=0.25, seed=1)
    meta = {"dataset": trained.name, "data": trained.record}
    copy = tmp_path / "renamed"
    shutil.copytree(root, copy)
    for given in (root, copy):
        data = dataset_for_weights(given, None, False, meta)
        assert data.files == trained.files, given  # seed 0 put training images in "test" before
    next(copy.rglob("*.png")).unlink()  # another folder, or the same one changed: never scored
    with pytest.raises(DatasetError, match="not what these weights were trained on"):
        dataset_for_weights(copy, None, False, meta)


# --------------------------------------------------------------------------- a source that names a file loads it


def test_local_dir_and_path_sources_load_the_same_tensors(tmp_path: Path) -> None:
    import torch

    from aperture_zoo import load
    from hub_fixtures import random_weights

    weights = random_weights(tmp_path / "run" / "model.safetensors", "resnet10")
    want = load(str(weights)).state_dict()
    for source in (f"local-dir:{weights.parent}", str(weights.parent)):
        got = load(source).state_dict()  # random tensors with the file's class names before
        assert all(torch.equal(got[k], want[k]) for k in want), source
    bare = load(f"local-dir:{weights.parent}", pretrained=False)  # the architecture alone, asked for explicitly
    assert not torch.equal(bare.state_dict()["fc.weight"], want["fc.weight"])
