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
