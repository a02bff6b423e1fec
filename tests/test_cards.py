"""Model cards and config.json: generated from files, honest without weights, never stale."""

from __future__ import annotations

import json

import pytest
import yaml

from hub_fixtures import random_weights
from aperture_zoo.cards import CardError, stale_files, write_card
from aperture_zoo.pretrained import MODEL_CARDS_DIR
from aperture_zoo.registry import CIFAR10_CLASSES, list_models
from aperture_zoo.summary import measure
from aperture_zoo.files import file_sha256


def _front_matter(readme: str) -> dict:
    assert readme.startswith("---\n")
    return yaml.safe_load(readme.split("---\n", 2)[1])


@pytest.mark.parametrize("name", list_models())
def test_committed_cards_are_up_to_date(name):
    committed = MODEL_CARDS_DIR / name
    assert (committed / "README.md").is_file() and (committed / "config.json").is_file()
    assert stale_files(name, committed) == [], (
        f"model_cards/{name} is out of date: run `aperture card {name}` and commit it")
    if not (committed / "model.safetensors").is_file() and not (committed / "weights.json").is_file():
        readme = (committed / "README.md").read_text()
        assert "No trained weights are published for this model yet" in readme
        assert "model-index" not in _front_matter(readme) and "%" not in readme


def test_stale_check_catches_every_kind_of_drift(tmp_path):
    card = write_card("resnet32", tmp_path / "resnet32")
    assert stale_files("resnet32", card) == []
    readme = (card / "README.md").read_text()
    (card / "README.md").write_text(readme.replace("4,754,218", "4,754,219"))  # a hand-edited number
    assert stale_files("resnet32", card) == ["README.md"]
    (card / "README.md").write_text(readme)
    config = json.loads((card / "config.json").read_text())
    config["flops_per_image"] += 1
    (card / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    assert stale_files("resnet32", card) == ["config.json"]
    (card / "config.json").unlink()
    assert stale_files("resnet32", card) == ["config.json"]
    # A card of a model that was trained since: new weights beside it make the old card stale.
    (card / "README.md").unlink()  # without its config.json it reads as another tool's README, which is kept
    write_card("resnet32", card)
    random_weights(card / "model.safetensors", "resnet32", test_top1=12.5)
    assert stale_files("resnet32", card) == ["README.md", "config.json"]


def test_card_without_weights_makes_no_accuracy_claim(tmp_path):
    write_card("resnet22", tmp_path)
    readme = (tmp_path / "README.md").read_text()
    meta = _front_matter(readme)
    assert "model-index" not in meta and meta["datasets"] == ["cifar10"] and "onnx" not in meta["tags"]
    # resnet22's weights are published: the folder has none, which is what the card says (ninth try, N1: it said
    # "no trained weights are published for this model yet")
    assert "No trained weights are published" not in readme and "**This folder holds no weights:**" in readme
    assert "`aperture card resnet22.fast --out DIR` writes their card" in readme
    # and nothing in it speaks of weights beside it (tenth try, C1): the snippets load the published ones
    assert "these weights" not in readme and 'weights="model.safetensors"' not in readme
    assert 'load("resnet22", pretrained=True)  # the published weights, not in this folder' in readme
    assert "No trained, evaluated weights exist" not in readme and "This folder holds no weights, so" in readme
    assert "%" not in readme and "## Results" not in readme and "mixup" not in readme
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["trained"] is False and "metrics" not in config and "files" not in config
    assert config["params"] == measure("resnet22")["params"] == 4_922_826
    assert f"{measure('resnet22')['flops']:,}" in readme


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    recipe = {"name": "paper", "optimizer": "adadelta", "lr": 0.1, "batch_size": 64, "mixup_alpha": 1.0}
    random_weights(run / "model.safetensors", "resnet18", init_seed=1, test_top1=87.6543, test_loss=0.4321,
                   epochs=7, recipe=recipe, seed=11, train_device="NVIDIA H100 80GB HBM3",
                   wall_time_s=123.4, train_images_per_s=9876.5, subset=None)
    per_class = {c: 80.0 + i for i, c in enumerate(CIFAR10_CLASSES)}
    (run / "eval.json").write_text(json.dumps({
        "top1": 87.65, "per_class_top1": per_class, "confusion": [[0] * 10] * 10,
        "images_per_s": 4321.0, "num_images": 10000, "device": "cpu"}))
    (run / "metrics.jsonl").write_text('{"epoch": 7}\n')
    return run


def test_card_from_run_reads_every_number_from_the_files(run_dir, tmp_path):
    out = write_card("resnet18", tmp_path / "card", run_dir=run_dir)
    for copied in ("model.safetensors", "eval.json", "metrics.jsonl"):
        assert (out / copied).read_bytes() == (run_dir / copied).read_bytes()
    readme = (out / "README.md").read_text()
    meta = _front_matter(readme)
    result = meta["model-index"][0]["results"][0]
    assert result["dataset"]["type"] == "cifar10" and result["metrics"][0]["value"] == 87.65
    assert "Final-epoch top-1 accuracy: **87.65%** (epoch 7" in readme
    assert "NVIDIA H100 80GB HBM3" in readme and "adadelta" in readme
    assert "| truck | 89.00 |" in readme and "| airplane | 80.00 |" in readme
    assert "zhang2018mixup" in readme and "he2016deep" in readme
    config = json.loads((out / "config.json").read_text())
    assert config["trained"] and config["metrics"]["top1"] == 87.6543
    assert config["metrics"]["per_class_top1"]["truck"] == 89.0
    assert config["files"]["model.safetensors"]["sha256"] == file_sha256(out / "model.safetensors")
    assert config["recipe"]["mixup_alpha"] == 1.0 and config["training"]["epochs"] == 7


def test_card_is_deterministic_and_survives_without_the_weights_file(run_dir, tmp_path):
    out = write_card("resnet18", tmp_path / "a", run_dir=run_dir)
    first = {f: (out / f).read_text() for f in ("README.md", "config.json", "weights.json")}
    write_card("resnet18", out)
    assert {f: (out / f).read_text() for f in first} == first
    (out / "model.safetensors").unlink()  # a clean checkout: weights are not committed
    write_card("resnet18", out)
    assert {f: (out / f).read_text() for f in first} == first


def test_card_for_weights_without_accuracy_claims_nothing(tmp_path):
    random_weights(tmp_path / "model.safetensors", "resnet10")
    write_card("resnet10", tmp_path)
    readme = (tmp_path / "README.md").read_text()
    assert "carry no test accuracy in their metadata" in readme
    assert "model-index" not in _front_matter(readme) and "## Results" not in readme
    assert "Accuracy is measured" not in readme and "nothing about the model's accuracy is known" in readme


def test_card_without_mixup_does_not_cite_it(tmp_path):
    random_weights(tmp_path / "model.safetensors", "resnet10", test_top1=50.0, recipe={"mixup_alpha": 0.0},
                   test_subset=1000)
    write_card("resnet10", tmp_path)
    readme = (tmp_path / "README.md").read_text()
    assert "zhang2018mixup" not in readme and "50.00%" in readme
    assert "Measured on a subset of the test set (1,000 images)" in readme
    assert "Per-class accuracy: not available" in readme


def test_card_errors_name_the_fix(tmp_path, run_dir):
    with pytest.raises(CardError, match="has no model.safetensors; pass the folder a training run wrote"):
        write_card("resnet18", tmp_path / "out", run_dir=tmp_path)
    with pytest.raises(CardError, match="holds weights for resnet18, not resnet22"):
        write_card("resnet22", tmp_path / "out2", weights=run_dir / "model.safetensors")


def test_card_cli(run_dir, tmp_path):
    from typer.testing import CliRunner

    from aperture_zoo.cli import app

    result = CliRunner().invoke(app, ["card", "resnet18", "--run", str(run_dir), "--out", str(tmp_path / "c")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "c" / "README.md").is_file() and (tmp_path / "c" / "model.safetensors").is_file()
    result = CliRunner().invoke(app, ["card", "resnet18", "--run", str(tmp_path / "nope"), "--out", str(tmp_path)])
    assert result.exit_code == 2 and "has no model.safetensors" in result.output


def test_card_shows_the_runtime_matrix_beside_it(tmp_path):
    cell = {"precision": "fp32", "declared_valid": True, "passed": True, "images": 2000}
    matrix = {"images": "2,000 CIFAR-10 test images (stratified)", "batch": 100, "cells": [
        {**cell, "runtime": "ort-1.16", "version": "1.16.3", "agreement": 100.0, "max_abs_diff": 4.3e-6},
        {**cell, "runtime": "opencv-5", "precision": "int8", "version": "5.0.0", "agreement": None,
         "max_abs_diff": None, "passed": None, "declared_valid": False, "note": "fails to load or run: bufidx"},
        {**cell, "runtime": "ort-cuda", "version": None, "agreement": None, "max_abs_diff": None, "passed": None},
    ]}
    weights = random_weights(tmp_path / "model.safetensors", "resnet10", test_top1=12.5)
    (tmp_path / "runtimes.json").write_text(json.dumps({**matrix, "weights_sha256": "0" * 64}))
    from aperture_zoo.provenance import StaleFileError

    with pytest.raises(StaleFileError, match="runtimes.json' measured files of other weights"):  # not these weights' files
        write_card("resnet10", tmp_path)
    (tmp_path / "runtimes.json").write_text(json.dumps({**matrix, "weights_sha256": file_sha256(weights)}))
    write_card("resnet10", tmp_path)
    readme = (tmp_path / "README.md").read_text()
    assert "## Runtimes" in readme and "2,000 CIFAR-10 test images (stratified) at batch 100" in readme
    assert "| ort-1.16 | 1.16.3 | 100.0 %, 4.3e-06 | not run |" in readme
    assert "| opencv-5 | 5.0.0 | not run | fails to load (not validated) |" in readme
    assert "ort-cuda" not in readme  # a runtime that did not run here is not a row
    assert stale_files("resnet10", tmp_path) == []


def test_a_run_folder_whose_weights_were_replaced_gives_no_card(run_dir, tmp_path):
    """Its log (and the curves drawn from it) would sit beside other weights, showing another run's
    figures: the log's last test top-1 must be the one the weights record."""
    import shutil

    from aperture_zoo.card_facts import CardError

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    (run / "metrics.jsonl").write_text('{"epoch": 6, "test_top1": 80.0}\n{"epoch": 7, "test_top1": 87.6543}\n')
    write_card("resnet18", tmp_path / "ok", run_dir=run)  # the log ends at these weights
    (run / "metrics.jsonl").write_text('{"epoch": 7, "test_top1": 75.0}\n')
    with pytest.raises(CardError, match="does not end at these weights"):
        write_card("resnet18", tmp_path / "stale", run_dir=run)
    assert not (tmp_path / "stale").exists()


def test_a_hand_written_readme_is_never_replaced_by_a_card(tmp_path):
    """Seventh hostile try, L2: `card --out DIR` overwrote a README.md the user had edited, without a word."""
    from typer.testing import CliRunner

    from aperture_zoo.card_facts import CardError
    from aperture_zoo.cli import app

    out = write_card("resnet10", tmp_path / "c")
    assert json.loads((out / "config.json").read_text())["readme_sha256"]
    write_card("resnet10", out)  # its own card: rewritten freely
    (out / "README.md").write_text((out / "README.md").read_text() + "\nMy notes on this model.\n")
    result = CliRunner().invoke(app, ["card", "resnet10", "--out", str(out)])
    assert result.exit_code == 2 and "is not the card aperture last wrote there" in " ".join(result.output.split())
    assert (out / "README.md").read_text().endswith("My notes on this model.\n")  # nothing lost
    other = tmp_path / "theirs"
    other.mkdir()
    (other / "README.md").write_text("# a README of another tool\n")
    with pytest.raises(CardError, match="move it aside"):
        write_card("resnet10", other)
    (other / "config.json").write_text('{"model_type": "bert"}')  # another tool's pair (eighth try, F5)
    with pytest.raises(CardError, match="move it aside"):
        write_card("resnet10", other)
    for name, text in (("config.json", '{"model_type": "bert"}'), ("LICENSE", "Apache License 2.0")):  # ninth, N3
        alone = tmp_path / f"alone-{name}"
        alone.mkdir()
        (alone / name).write_text(text)
        with pytest.raises(CardError, match=f"{name} is not a file aperture wrote"):
            write_card("resnet10", alone)
        assert (alone / name).read_text() == text
    legacy = tmp_path / "legacy"  # a card from before the record: taken as the package's own
    write_card("resnet10", legacy)
    config = json.loads((legacy / "config.json").read_text())
    del config["readme_sha256"]
    (legacy / "config.json").write_text(json.dumps(config))
    (legacy / "README.md").write_text("old card\n")
    write_card("resnet10", legacy)
