"""Training on your own folder: no silent failure, defaults that fit small folders, your model calibrated and named.

Small synthetic folders (``test_data_report.write_folder``), a tiny network, a few epochs.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from aperture_zoo.cli import app
from aperture_zoo.files import file_sha256
from aperture_zoo.weights import decode_metadata, read_metadata
from test_data_report import TINY, write_folder
from test_data_report import _cache_in_tmp  # noqa: F401 - the decode cache and weights in tmp

pytestmark = pytest.mark.usefixtures("one_thread")  # the same kernels each run; 2 shared cores


def _run(*args: str) -> object:
    return CliRunner().invoke(app, [str(a) for a in args])


def _first_error_line(output: str) -> str:
    return next(line for line in output.splitlines() if line.startswith("error:"))


# --------------------------------------------------------------------------- the rules (train/guard.py)


def test_the_divergence_rules() -> None:
    from aperture_zoo.train.guard import epoch_problem, loss_limit, loss_problem

    assert loss_limit(10) == pytest.approx(10 * math.log(10)) and loss_limit(2) == 10
    assert loss_problem(2.3, 10) is None and loss_problem(23.0, 10) is None
    assert loss_problem(439_099.0, 10).startswith("loss exploded to 439,099")
    assert loss_problem(float("nan"), 10) == "loss became nan" and loss_problem(float("inf"), 3) == "loss became inf"
    row = {"epoch": 3, "train_top1": 10.4}
    assert epoch_problem(row, 30, 10.0, 10) is None  # epoch 3 of 30 is too early to judge (from epoch 10)
    assert epoch_problem({**row, "epoch": 10}, 30, 10.0, 10).startswith("top-1 is still at chance after 10 epochs")
    assert epoch_problem({**row, "epoch": 2}, 2, 10.0, 10) is None  # runs under 3 epochs are not judged
    assert epoch_problem({"epoch": 3, "train_top1": 15.0}, 3, 10.0, 10) is None  # 14.5 % is the ceiling
    broken = {"epoch": 3, "train_top1": 90.0, "test_loss": 1.2e9}
    assert "test loss of 1.2e+09 in eval mode" in epoch_problem(broken, 3, 10.0, 10)


# --------------------------------------------------------------------------- runs that fail say so


def test_a_run_at_chance_stops_non_zero_keeping_its_last_checkpoint(tmp_path: Path) -> None:
    """Too high an lr from scratch: the loss blows up, then the network answers one class (exit 0 before)."""
    root = write_folder(tmp_path / "d", 30)
    run = tmp_path / "run"
    result = _run("train", "resnet10", *TINY, "--dataset", root, "--lr", "5", "--set", "epochs=6", "--device", "cpu",
                  "--no-progress", "--out", run)
    assert result.exit_code == 2, result.output
    first = _first_error_line(result.output)
    assert first.startswith("error: the training top-1 is still at chance after 3 epochs"), first
    assert "The last good checkpoint (epoch 2) is kept" in first and not (run / "model.safetensors").exists()
    resume = re.search(r"`(aperture train --resume \S+ --lr 2.5)`", " ".join(result.output.split()))
    assert resume, result.output
    assert json.loads((run / "recipe.json").read_text())["lr"] == 5


def test_an_exploding_loss_stops_the_run(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "d", 30)
    result = _run("train", "resnet10", *TINY, "--dataset", root, "--lr", "20", "--set", "epochs=6", "--device", "cpu",
                  "--no-progress", "--out", tmp_path / "run")
    assert result.exit_code == 2, result.output
    assert _first_error_line(result.output).startswith("error: the training loss exploded to "), result.output
    assert "start again with half of it" in result.output and not (tmp_path / "run" / "model.safetensors").exists()


# --------------------------------------------------------------------------- small folders, calibration, names


def test_a_folder_of_few_images_fine_tunes_with_the_default_recipe(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "d", 10)  # 24 training images; the finetune recipe's batch is 128
    run = tmp_path / "run"
    result = _run("train", "resnet10", "--dataset", root, "--init", "resnet10.fast", "--epochs", "1", "--device", "cpu",
                  "--no-progress", "--out", run)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    from aperture_zoo.train.recipes import FINETUNE

    lr = FINETUNE.lr * 4 / 128  # the recipe's lr at batch 128, scaled linearly to batch 4
    assert (f"24 training images: batch size 128 -> 4 (at least 4 steps an epoch), lr {FINETUNE.lr:g} -> "
            f"{lr:g}") in text
    assert "too few to hold out 20 for calibration" in text  # and said so: no validation split
    recipe = json.loads((run / "recipe.json").read_text())
    assert (recipe["batch_size"], recipe["lr"], recipe["name"]) == (4, lr, "finetune")
    meta = decode_metadata(read_metadata(run / "model.safetensors"))
    assert meta["init"]["head"] == "new" and "temperature" not in meta


def test_init_keeps_the_head_only_for_the_same_class_names(tmp_path: Path) -> None:
    from aperture_zoo.model import create_model
    from aperture_zoo.train.finetune import InitSource, load_init
    from aperture_zoo.weights import save_weights

    tiny = create_model("resnet10", channels=(8, 8, 8, 8), num_classes=3).spec
    torch.manual_seed(0)
    source = create_model(tiny.replace(class_names=("airplane", "automobile", "bird")))
    save_weights(source, tmp_path / "src.safetensors")
    src = InitSource("src", tmp_path / "src.safetensors", file_sha256(tmp_path / "src.safetensors"), source.spec)
    for names, kept in ((("airplane", "automobile", "bird"), True), (("eight", "five", "four"), False),
                        (("automobile", "airplane", "bird"), False)):
        torch.manual_seed(1)
        model = create_model(tiny.replace(class_names=names))
        fresh = model.fc.weight.detach().clone()
        load_init(model, src)
        assert torch.equal(model.fc.weight, source.fc.weight) is kept, names
        assert torch.equal(model.fc.weight, fresh) is not kept, names
        assert torch.equal(model.conv1.weight, source.conv1.weight)  # the backbone always comes along


def test_eval_writes_the_temperature_it_fits_to_a_new_file(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "d", 40)  # 24 test images a class: halves of 36 to cross-fit on
    run = tmp_path / "run"
    result = _run("train", "resnet10", *TINY, "--dataset", root, "--set", "epochs=1", "--device", "cpu",
                  "--no-progress", "--out", run, "--test-split", "0.6", "--val-split", "0")
    assert result.exit_code == 0, result.output
    weights = run / "model.safetensors"
    before = file_sha256(weights)
    assert "temperature" not in decode_metadata(read_metadata(weights))
    out = tmp_path / "calibrated.safetensors"
    result = _run("eval", "resnet10", "--weights", weights, "--dataset", root, "--device", "cpu", "--write-temperature", out)
    assert result.exit_code == 0, result.output
    meta = decode_metadata(read_metadata(out))
    report = json.loads((run / "eval.json").read_text())
    assert report["weights"] == "model.safetensors" and str(tmp_path) not in (run / "eval.json").read_text()  # travels
    assert meta["temperature"] == pytest.approx(report["temperature"], rel=1e-5)
    assert meta["temperature_fitted_for_sha256"] == before == file_sha256(weights)  # the source is untouched
    assert meta["temperature_fitted_on"] == "72 test images, by aperture eval"
    from aperture_zoo import load

    assert load("resnet10", weights=out).temperature == pytest.approx(meta["temperature"])
    # and the calibrator fit_calibrator chose on the same images, which predict_proba then uses
    assert meta["calibrator"]["kind"] == report["calibrator"]["kind"]
    assert meta["calibrator"]["fitted_on"] == "72 test images, by aperture eval"
    assert load("resnet10", weights=out).calibrator.kind == report["calibrator"]["kind"]
    written = file_sha256(out)
    again = _run("eval", "resnet10", "--weights", weights, "--dataset", root, "--device", "cpu", "--write-temperature", out)
    assert again.exit_code == 2 and "already exists" in again.output
    assert file_sha256(out) == written  # never overwritten
    (tmp_path / "dangling.safetensors").symlink_to(tmp_path / "missing" / "x.safetensors")  # ninth hostile try, N7
    link = _run("eval", "resnet10", "--weights", weights, "--dataset", root, "--device", "cpu", "--write-temperature",
                tmp_path / "dangling.safetensors")
    assert link.exit_code == 2 and "is a link (to a missing file); name a new file" in link.output, link.output
    assert not (tmp_path / "missing").exists() and ".new" not in link.output
    # the folder changed since: its test images would be drawn anew, so eval refuses to score them
    write_folder(root, 1, classes=1, seed=3, start=900)
    changed = _run("eval", "resnet10", "--weights", weights, "--dataset", root, "--device", "cpu")
    assert changed.exit_code == 2 and "changed since these weights were trained on it" in changed.output


def test_docs_and_help_name_every_recipe() -> None:
    from aperture_zoo.train.recipes import FINETUNE, RECIPES

    help_text = " ".join(_run("train", "--help").output.split())
    for name in RECIPES:
        assert name in help_text.split("--recipe")[1][:200], name
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    row = next(line for line in readme.splitlines() if line.startswith("| `finetune`"))
    assert f"label smoothing {FINETUNE.label_smoothing:g}" in row
    assert np.isclose(FINETUNE.label_smoothing, 0.1)
