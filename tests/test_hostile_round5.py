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


# --------------------------------------------------------------------------- the file's own facts, both ways


def test_load_weights_and_save_weights_keep_the_files_own_facts(tmp_path: Path) -> None:
    from aperture_zoo import create_model, load, load_weights, save_weights
    from aperture_zoo.registry import get_spec
    from aperture_zoo.weights import decode_metadata, read_metadata

    spec = get_spec("resnet10").replace(num_classes=3, class_names=("car", "cat", "plane"),
                                        mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))
    source = create_model(spec)
    source.temperature = 1.7
    first = save_weights(source, tmp_path / "a.safetensors", {"dataset": "/somewhere/ds3", "data": {"layout": "pool"}})
    into = load_weights(create_model("resnet10", num_classes=3), first)  # CIFAR's names and mean/std kept before
    assert (into.spec.class_names, into.spec.mean, into.spec.std, into.temperature) == (
        spec.class_names, spec.mean, spec.std, 1.7)
    again = save_weights(load(str(first)), tmp_path / "b.safetensors")  # temperature dropped, dataset "cifar10" before
    meta = decode_metadata(read_metadata(again))
    assert meta["temperature"] == 1.7 and meta["dataset"] == "/somewhere/ds3" and meta["data"] == {"layout": "pool"}
    back = load(str(again))
    assert (back.spec.class_names, back.spec.mean, back.temperature) == (spec.class_names, spec.mean, 1.7)
    fresh = save_weights(create_model(spec), tmp_path / "c.safetensors")  # never loaded: never called CIFAR-10
    assert "dataset" not in decode_metadata(read_metadata(fresh))


# --------------------------------------------------------------------------- card metadata of any JSON type

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from profiles import examples  # noqa: E402

_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                     max_leaves=6)


@pytest.fixture(scope="module")
def trained_weights(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict]:
    from hub_fixtures import random_weights
    from safetensors import safe_open

    path = random_weights(tmp_path_factory.mktemp("w") / "model.safetensors", "resnet10", test_top1=50.0,
                          test_loss=1.2, epochs=3, recipe={"lr": 0.1, "mixup_alpha": 0.2}, seed=1, ema=False)
    with safe_open(str(path), "pt") as f:
        return dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}


@settings(max_examples=examples(30))
@given(key=st.sampled_from(sorted([*__import__("aperture_zoo.card_facts", fromlist=["x"]).CARD_FIELDS, "test_top1"])),
       value=_JSON | st.text(max_size=8), as_json=st.booleans())
def test_a_card_refuses_or_copes_with_any_metadata_value(tmp_path_factory: pytest.TempPathFactory,
                                                          trained_weights: tuple[dict, dict], key: str, value: object,
                                                          as_json: bool) -> None:
    """``recipe="x"`` or ``test_loss="x"`` (any Hub repo can write them) gave a traceback before."""
    import json

    from safetensors.torch import save_file

    from aperture_zoo.cards import write_card
    from aperture_zoo.errors import ApertureError

    meta, tensors = trained_weights
    folder = tmp_path_factory.mktemp("card")
    text = json.dumps(value) if as_json or not isinstance(value, str) else value
    save_file(tensors, str(folder / "model.safetensors"), metadata={**meta, key: text})
    try:
        write_card("resnet10", folder / "card", weights=folder / "model.safetensors")
    except ApertureError as exc:
        assert "\n" not in str(exc)


# --------------------------------------------------------------------------- test/ that only copies train/


def test_a_test_folder_of_copies_is_refused_alike_by_the_report_and_by_training(tmp_path: Path) -> None:
    from aperture_zoo.datareport import DataReportError, folder_report

    write_folder(tmp_path / "d" / "train", 6)
    shutil.copytree(tmp_path / "d" / "train", tmp_path / "d" / "test")  # every test image copies a training one
    for read in (lambda: folder_report(tmp_path / "d"), lambda: load_dataset(tmp_path / "d")):
        with pytest.raises(DataReportError, match=r"^all 18 images in test/ \(airplane 6, automobile 6, bird 6\) are "
                                                  r"exact copies of training images"):
            read()  # the report said exit 0 while training refused with "each class needs at least 2" before


def test_predict_with_weights_alone_takes_the_files_architecture(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from aperture_zoo.cli import app
    from hub_fixtures import random_weights

    weights = random_weights(tmp_path / "model.safetensors", "resnet10")
    png = next(write_folder(tmp_path / "d", 1).rglob("*.png"))
    result = CliRunner().invoke(app, ["predict", str(png), "--weights", str(weights)])
    assert result.exit_code == 0, result.output  # refused as "not resnet22" before


def test_a_fine_tunes_card_exports_its_own_weights(tmp_path: Path) -> None:
    from aperture_zoo.cards import write_card
    from hub_fixtures import random_weights

    weights = random_weights(tmp_path / "run" / "model.safetensors", "resnet10", test_top1=50.0, test_loss=1.0)
    card = (write_card("resnet10", tmp_path / "card", weights=weights) / "README.md").read_text()
    assert "aperture export model.safetensors --onnx" in card
    assert "--pretrained --onnx" not in card  # it told a fine-tune's users to export the published resnet10


def test_a_fine_tunes_card_names_the_weights_it_started_from(tmp_path: Path) -> None:
    """Sixth hostile try, N6: a fine-tune's card never said which weights it started from."""
    from aperture_zoo.cards import write_card
    from hub_fixtures import random_weights

    sha = "ab" * 32
    init = {"ref": "resnet10 <b>|x", "sha256": sha, "arch": "resnet10", "num_classes": 10, "head": "new"}
    weights = random_weights(tmp_path / "run" / "model.safetensors", "resnet10", test_top1=50.0, test_loss=1.0,
                             init=init, freeze_backbone=True)
    card = (write_card("resnet10", tmp_path / "card", weights=weights) / "README.md").read_text()
    line = next(row for row in card.splitlines() if row.startswith("| started from |"))
    assert sha in line and "a new head" in line
    assert "&lt;b&gt;" in line and "\\|x" in line and "<b>" not in card  # outside text stays text, one cell
    assert "| backbone frozen | True |" in card
    plain = (write_card("resnet10", tmp_path / "card2", weights=random_weights(
        tmp_path / "r2" / "model.safetensors", "resnet10", test_top1=50.0, test_loss=1.0)) / "README.md").read_text()
    assert "started from" not in plain


def test_export_no_validate_says_nothing_is_validated(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from aperture_zoo.cli import app
    from hub_fixtures import random_weights

    weights = random_weights(tmp_path / "model.safetensors", "resnet10", dataset=str(tmp_path / "a-folder"))
    result = CliRunner().invoke(app, ["export", str(weights), "--onnx", "--no-validate", "--exporter", "legacy",
                                      "--opset", "17", "-o", str(tmp_path / "onnx")])
    assert result.exit_code == 0, result.output
    assert "random inputs only" not in result.output  # "validating on random inputs only" before: nothing was
    assert "nothing was validated" in result.output


def test_weights_without_a_manifest_of_their_pool_folder_are_not_scored_on_a_guessed_split(tmp_path: Path) -> None:
    """An older or trimmed file (no manifest_sha256) got seed 0's split: its training images scored as test."""
    root = write_folder(tmp_path / "d", 8)
    trained = load_dataset(root, test_split=0.25, seed=1)
    record = {k: v for k, v in trained.record.items() if k != "manifest_sha256"}
    with pytest.raises(DatasetError, match="no content manifest"):
        dataset_for_weights(root, None, False, {"dataset": trained.name, "data": record})
