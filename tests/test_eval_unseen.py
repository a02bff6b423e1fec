"""``aperture eval --dataset DIR --unseen``: every image of a folder the user declares the weights never trained on.

Labels go by class name to the model's outputs (a folder of ``dog/`` and ``cat/`` scores a CIFAR-10 model's
outputs 5 and 3), the one check possible is refused (the training folder itself), eval.json says what was
scored in a key of its own, and a card never shows such an eval.json as the model's test accuracy.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from aperture_zoo.cli import app
from aperture_zoo.datasets import load_dataset
from aperture_zoo.folder import load_folder
from aperture_zoo.manifest import Manifest
from aperture_zoo.model import create_model
from aperture_zoo.unseen import UnseenError, unseen_folder
from aperture_zoo.weights import decode_metadata, read_metadata, save_weights
from cifar_synth import CLASSES, make_images, write_png_folder
from test_data_report import _cache_in_tmp, write_folder  # noqa: F401 - the decode cache and weights in tmp

pytestmark = pytest.mark.usefixtures("one_thread")
SMALL = {"channels": (8, 8, 8, 8)}


def _cifar_weights(path: Path, **meta: object) -> Path:
    """A tiny CIFAR-10 model whose predictions fall on cat (3) or dog (5), varying with the image: both right and
    wrong answers, so a label given by position instead of by name changes the score."""
    torch.manual_seed(0)
    model = create_model("resnet10", **SMALL)
    with torch.no_grad():
        model.fc.bias.fill_(-50.0)
        model.fc.bias[[3, 5]] = 0.0
        model.fc.weight.mul_(20.0)
    assert model.spec.label_names == tuple(CLASSES)
    return save_weights(model, path, {"dataset": "cifar10", **{k: json.dumps(v) for k, v in meta.items()}})


def _photos(root: Path, per_class: int = 25) -> Path:
    """``root/dog`` and ``root/cat`` (written in that order; sorted, the folder's class 0 is cat)."""
    x, y = make_images(per_class, seed=7)
    keep = np.isin(y, [5, 3])
    return write_png_folder(root, x[keep], np.where(y[keep] == 5, 0, 1), ["dog", "cat"], per_class)


def _expected(weights: Path, root: Path) -> tuple[int, dict[str, int]]:
    """Each image of the folder run through the model by hand: (correct, correct per class), the label being the
    CIFAR-10 index of the folder's name."""
    from PIL import Image

    from aperture_zoo.pretrained import load

    model = load("resnet10", weights=str(weights)).eval()
    mean, std = torch.tensor(model.spec.mean).view(1, 3, 1, 1), torch.tensor(model.spec.std).view(1, 3, 1, 1)
    per_class = {}
    for folder in sorted(root.iterdir()):
        x = np.stack([np.asarray(Image.open(p).convert("RGB")).transpose(2, 0, 1) for p in sorted(folder.iterdir())])
        with torch.no_grad():
            pred = model((torch.as_tensor(x).float() / 255 - mean) / std).argmax(1)
        per_class[folder.name] = int((pred == CLASSES.index(folder.name)).sum())
    return sum(per_class.values()), per_class


def test_labels_go_by_name_to_the_model_outputs_and_eval_json_says_what_was_scored(tmp_path: Path) -> None:
    weights = _cifar_weights(tmp_path / "w" / "model.safetensors")
    photos = _photos(tmp_path / "new_photos")
    got = unseen_folder(photos, {"dataset": "cifar10"}, tuple(CLASSES))
    assert got.split.classes == tuple(CLASSES) and sorted(set(got.split.labels.tolist())) == [3, 5]
    assert (got.split.labels == 3).sum() == 25 and (got.split.labels == 5).sum() == 25
    ran = CliRunner().invoke(app, ["eval", "resnet10", "--weights", str(weights), "--dataset", str(photos), "--unseen",
                                   "--device", "cpu"])
    assert ran.exit_code == 0, ran.output
    assert not (tmp_path / "w" / "eval.json").exists()  # never in place of the held-out split's eval.json
    ev = json.loads((tmp_path / "w" / "unseen-new_photos" / "eval.json").read_text())
    correct, per_class = _expected(weights, photos)
    assert 0 < correct < 50  # both right and wrong answers: the check below can fail
    confusion = np.array(ev["confusion"])
    assert confusion[3].sum() == 25 and confusion[5].sum() == 25 and confusion.sum() == 50
    assert confusion[3, 3] == per_class["cat"] and confusion[5, 5] == per_class["dog"]
    assert ev["top1"] == pytest.approx(100 * correct / 50)
    assert ev["per_class_top1"]["airplane"] is None  # a class the folder lacks: no images
    assert ev["test_set"] == {
        "kind": "unseen folder", "dataset": "folder:new_photos", "manifest_sha256": load_folder(photos).scan.manifest().sha256,
        "num_images": 50, "folder_images": 50, "classes": {"cat": 25, "dog": 25},
        "declared": "declared unseen (--unseen; not checked image by image)",
        "checked": "nothing: these weights record no training folder to compare with"}
    assert str(tmp_path) not in json.dumps(ev["test_set"])
    text = " ".join(ran.output.split())
    assert "on all 50 images of folder:new_photos, declared unseen (--unseen; not checked image by image)" in text, text
    assert "airplane no images" in text


def test_folder_weights_refuse_their_own_training_folder_and_score_new_images(tmp_path: Path) -> None:
    pool = write_folder(tmp_path / "pool", 8)
    trained = load_dataset(pool, test_split=0.25, seed=1)
    model = create_model("resnet10", num_classes=3, **SMALL)
    model.spec = model.spec.replace(class_names=trained.classes)
    weights = save_weights(model, tmp_path / "w.safetensors", {"dataset": trained.name, "data": json.dumps(trained.record)})
    meta = decode_metadata(read_metadata(weights))
    out = tmp_path / "ev"
    again = CliRunner().invoke(app, ["eval", str(weights), "--dataset", str(pool), "--unseen", "--out", str(out)])
    assert again.exit_code == 2 and "drop --unseen to score its held-out split" in " ".join(again.output.split())
    assert not out.exists()
    new = write_folder(tmp_path / "later", 3, classes=2, seed=9)  # airplane and automobile only
    got = unseen_folder(new, meta, trained.classes)
    assert "only that it is not, as a whole, the folder these weights were trained on" in got.record["checked"]
    ran = CliRunner().invoke(app, ["eval", str(weights), "--dataset", str(new), "--unseen", "--out", str(out),
                                   "--device", "cpu"])
    assert ran.exit_code == 0, ran.output
    ev = json.loads((out / "eval.json").read_text())
    assert ev["test_set"]["dataset"] == "folder:later" and ev["num_images"] == 6
    assert ev["per_class_top1"][trained.classes[2]] is None


def test_bad_unseen_input_is_one_line_each(tmp_path: Path) -> None:
    weights = _cifar_weights(tmp_path / "w.safetensors")
    run = CliRunner()

    def refused(*args: str) -> str:
        result = run.invoke(app, ["eval", "resnet10", "--weights", str(weights), *args, "--out", str(tmp_path / "ev")])
        assert result.exit_code == 2, result.output
        assert result.output.startswith("error: ") and "Traceback" not in result.output, result.output
        assert not (tmp_path / "ev").exists()
        return " ".join(result.output.split())

    assert "pass the folder with --dataset DIR" in refused("--unseen")
    assert "a built-in dataset has its own test split: drop --unseen" in refused("--unseen", "--dataset", "cifar10")
    odd = _photos(tmp_path / "odd", 2)
    (odd / "dog").rename(odd / "zebra")
    with pytest.raises(UnseenError, match="class folder 'zebra' of .* is not one of the model's 10 classes "
                                          r"\('airplane', 'automobile'"):
        unseen_folder(odd, None, tuple(CLASSES))
    assert "class folder 'zebra'" in refused("--dataset", str(odd), "--unseen")
    (odd / "zebra").rename(odd / "Dog")
    assert "'Dog' and 'dog' differ only in case; rename the folder to 'dog'" in refused("--dataset", str(odd), "--unseen")
    split = tmp_path / "split"
    _photos(split / "train", 2)
    _photos(split / "test", 2)
    assert f"pass only the held-out ones: --dataset {str(split / 'test')!r} --unseen" in refused(
        "--dataset", str(split), "--unseen")
    assert unseen_folder(split / "test", None, tuple(CLASSES)).record["num_images"] == 4  # what it says works
    assert unseen_folder(_photos(tmp_path / "one", 1), None, tuple(CLASSES)).record["classes"] == {"cat": 1, "dog": 1}


def test_the_card_never_shows_an_unseen_eval_as_the_test_accuracy(tmp_path: Path) -> None:
    weights = _cifar_weights(tmp_path / "w" / "model.safetensors", test_top1=10.0, test_loss=2.3, epochs=1)
    photos = _photos(tmp_path / "new_photos")
    calibrated = tmp_path / "calibrated.safetensors"
    ran = CliRunner().invoke(app, ["eval", "resnet10", "--weights", str(weights), "--dataset", str(photos), "--unseen",
                                   "--device", "cpu", "-o", str(tmp_path / "w"), "--write-temperature", str(calibrated)])
    assert ran.exit_code == 0, ran.output
    fitted_on = decode_metadata(read_metadata(calibrated))["temperature_fitted_on"]
    assert fitted_on == ("all 50 images of folder:new_photos, declared unseen (--unseen; not checked image by image), "
                         "by aperture eval")
    ev = json.loads((tmp_path / "w" / "eval.json").read_text())
    made = CliRunner().invoke(app, ["card", "resnet10", "--run", str(tmp_path / "w"), "--out", str(tmp_path / "card")])
    assert made.exit_code == 0, made.output
    readme = " ".join((tmp_path / "card" / "README.md").read_text().split())
    assert "Re-evaluation" not in readme and "Per-class accuracy: |" not in readme and "| cat |" not in readme
    assert "ECE" not in readme and "reliability.png" not in readme  # nor its calibration as the test set's
    assert (f"Not this test set: the `eval.json` beside these weights scored other images, {ev['top1']:.2f}% top-1 on "
            "50 images of folder:new_photos, declared unseen by whoever ran `aperture eval --unseen`") in readme
    metrics = json.loads((tmp_path / "card" / "config.json").read_text())["metrics"]
    assert "per_class_top1" not in metrics and "calibration" not in metrics and metrics["top1"] == 10.0


def _run_folder(tmp_path: Path) -> tuple[Path, Path, list[str]]:
    """Weights in their run folder, beside a run.json listing the training folder file by file (its manifest and
    split, as a training run records them): (weights, the training folder, the held-out test files)."""
    pool = write_folder(tmp_path / "pool", 8)
    trained = load_dataset(pool, test_split=0.25, seed=1)
    model = create_model("resnet10", num_classes=3, **SMALL)
    model.spec = model.spec.replace(class_names=trained.classes)
    run = tmp_path / "run"
    run.mkdir()
    weights = save_weights(model, run / "model.safetensors", {"dataset": trained.name, "data": json.dumps(trained.record)})
    train_files, test_files = trained.files
    (run / "run.json").write_text(json.dumps({"data": {**trained.record, "manifest": trained.manifest.to_record(),
                                                       "split": {"train": train_files, "test": test_files, "val": []}}}))
    return weights, pool, test_files


def test_a_run_folder_refuses_training_images_image_by_image_and_scores_its_held_out_ones(tmp_path: Path) -> None:
    weights, pool, test_files = _run_folder(tmp_path)
    (pool / "airplane" / "zz.png").write_bytes(b"x")  # one junk file: the folder as a whole is no longer the same
    out = tmp_path / "ev"
    ran = CliRunner().invoke(app, ["eval", str(weights), "--dataset", str(pool), "--unseen", "--out", str(out)])
    text = " ".join(ran.output.split())
    assert ran.exit_code == 2 and "18 of the images in" in text and "are training images of these weights" in text, text
    assert "remove them, or drop --unseen to score the run's own held-out split" in text and not out.exists()
    held_out = tmp_path / "held_out"  # the run's own test images, copied: fine to score
    for rel in test_files:
        (held_out / rel).parent.mkdir(parents=True, exist_ok=True)
        (held_out / rel).write_bytes((pool / rel).read_bytes())
    ran = CliRunner().invoke(app, ["eval", str(weights), "--dataset", str(held_out), "--unseen", "--out", str(out),
                                   "--device", "cpu"])
    assert ran.exit_code == 0, ran.output
    ts = json.loads((out / "eval.json").read_text())["test_set"]
    assert ts["num_images"] == 6 and ts["checked"].startswith("image by image: none of its images is one of the 18")
    assert "checked image by image" in ts["declared"]
    text = " ".join(ran.output.split())
    assert "checked: image by image" in text and "that no other copy of a training image" in text, text


def test_a_run_json_that_is_not_the_weights_record_is_not_trusted(tmp_path: Path) -> None:
    weights, pool, _ = _run_folder(tmp_path)
    record = json.loads((weights.parent / "run.json").read_text())
    record["data"]["manifest"]["files"] = record["data"]["manifest"]["files"][:-1]  # another folder's manifest
    record["data"]["manifest"]["sha256"] = Manifest.of(map(tuple, record["data"]["manifest"]["files"])).sha256
    (weights.parent / "run.json").write_text(json.dumps(record))
    (pool / "airplane" / "zz.png").write_bytes(b"x")
    got = unseen_folder(pool, decode_metadata(read_metadata(weights)), ("airplane", "automobile", "bird"),
                        weights_file=weights)
    assert got.record["checked"].startswith("only that it is not, as a whole, the folder")
    assert got.record["declared"] == "declared unseen (--unseen; not checked image by image)"
