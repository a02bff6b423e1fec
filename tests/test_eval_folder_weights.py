"""Which folder the weights of a folder run are evaluated on: only where nothing they trained on is scored as test.

The weights record their training folder by one hash of its content manifest, not file by file: a pool
folder is split again only when that hash matches, another folder's test/ cannot be checked image by
image, and weights without a manifest are never given a guessed split of a pool.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from aperture_zoo.cli import app
from aperture_zoo.datasets import DatasetError, dataset_for_weights, load_dataset
from test_data_report import write_folder
from test_data_report import _cache_in_tmp  # noqa: F401 - the decode cache and weights in tmp

pytestmark = pytest.mark.usefixtures("one_thread")


def _split_folder(root: Path, pool: Path) -> Path:
    """``root/train`` and ``root/test`` with the classes of ``pool``: test/ images the weights never saw."""
    write_folder(root / "train", 4, seed=3)
    write_folder(root / "test", 3, seed=4)
    assert sorted(p.name for p in (root / "train").iterdir()) == sorted(p.name for p in pool.iterdir())
    return root


def test_pool_weights_on_a_split_folder_are_refused_for_the_right_reason(tmp_path: Path) -> None:
    """Hostile try 7, M1: the weights' recorded test_split reached the split folder's loader, which said "drop
    --test-split", an option eval does not have. Nothing proves that folder's test/ unseen: refused, naming what
    eval can do (the training folder, at any path)."""
    pool = write_folder(tmp_path / "pool", 8)
    trained = load_dataset(pool, test_split=0.25, seed=1)
    meta = {"dataset": trained.name, "data": trained.record}
    split = _split_folder(tmp_path / "split", pool)
    with pytest.raises(DatasetError) as refused:
        dataset_for_weights(split, None, False, meta)
    text = str(refused.value)
    assert "--test-split" not in text and "has its own train/ and test/ folders" in text, text
    assert text == (f"{str(split)!r} has its own train/ and test/ folders, but these weights were trained on a "
                    "folder of class folders (25% of each class held out) and record it only by a hash of its whole "
                    "content, so nothing shows that test/ holds no image they trained on; evaluate them on the folder "
                    "they were trained on, as it was (at any path: its held-out images are chosen again from its "
                    "content)"), text
    copy = tmp_path / "copy"
    shutil.copytree(pool, copy)  # what it can do: the training folder, anywhere, gives its recorded split back
    assert dataset_for_weights(copy, None, False, meta).files == trained.files


def test_cli_eval_of_pool_weights_on_a_split_folder_exits_2_with_one_line(tmp_path: Path) -> None:
    from aperture_zoo.model import create_model
    from aperture_zoo.weights import save_weights

    pool = write_folder(tmp_path / "pool", 8)
    trained = load_dataset(pool, test_split=0.25, seed=1)
    model = create_model("resnet10", channels=(8, 8, 8, 8), num_classes=3)
    model.spec = model.spec.replace(class_names=trained.classes)
    weights = save_weights(model, tmp_path / "w.safetensors",
                           {"dataset": trained.name, "data": json.dumps(trained.record)})
    split = _split_folder(tmp_path / "split", pool)
    result = CliRunner().invoke(app, ["eval", str(weights), "--dataset", str(split), "--device", "cpu",
                                      "--out", str(tmp_path / "ev")])
    assert result.exit_code == 2, result.output
    line = " ".join(result.output.split())
    assert line.startswith("error: ") and "drop --test-split" not in line, line
    assert "evaluate them on the folder they were trained on" in line, line
    assert not (tmp_path / "ev").exists()


def test_weights_claiming_a_split_folder_without_a_manifest_are_not_scored_on_a_pool(tmp_path: Path) -> None:
    """Hostile try 7, L6: a record edited to say ``layout: split`` with no manifest got seed 0's split of a pool
    (images the weights trained on scored as test, exit 0); refused as a record without a manifest is (N4)."""
    root = write_folder(tmp_path / "d", 8)
    trained = load_dataset(root, test_split=0.25, seed=1)
    record = {k: v for k, v in trained.record.items() if k != "manifest_sha256"}
    record["layout"] = "split"
    with pytest.raises(DatasetError, match="no content manifest"):
        dataset_for_weights(root, None, False, {"dataset": trained.name, "data": record})
    split = _split_folder(tmp_path / "split", root)  # a folder with its own test/: used as given, as before
    assert dataset_for_weights(split, None, False, {"dataset": trained.name, "data": record}).record["layout"] == "split"
