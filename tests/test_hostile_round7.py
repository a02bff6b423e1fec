"""A third hostile try: a fresh head that kept the old head's calibration, class probabilities of a features
model, a class-count complaint (with an argument load() does not take) before the real architecture mismatch,
and a folder's config.json trusted beside bare weights it does not describe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

import aperture_zoo
from aperture_zoo.cli import app
from aperture_zoo.errors import ApertureError
from aperture_zoo.files import file_sha256
from aperture_zoo.model import create_model
from aperture_zoo.predict import UncalibratedWarning, predict_proba
from aperture_zoo.samples import sample_images
from aperture_zoo.weights import WeightsError, load_weights, read_metadata, save_weights

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = (8, 8, 8, 8)
OLD_HEAD = {"temperature", "calibrator", "calibrator_tta", "dataset", "data", "test_top1", "test_loss"}


def _image() -> str:
    return str(sample_images()[0][0])


def _tiny(tmp_path: Path, num_classes: int = 2, names: tuple[str, ...] | None = ("cat", "dog"),
          calibrated: bool = False) -> Path:
    torch.manual_seed(0)
    model = create_model("resnet10", channels=TINY, num_classes=num_classes).eval()
    if names is not None:
        model.spec = model.spec.replace(class_names=names)
    if calibrated:
        from aperture_zoo.calibrators import Calibrator

        model.temperature, model.calibrator = 0.5, Calibrator("temperature", 0.5)
    extra = {"dataset": "pets", "data": {"classes": list(names or ())}} if calibrated else None  # a folder run's
    return save_weights(model, tmp_path / f"tiny{num_classes}" / "model.safetensors", extra)


# --------------------------------------------------------------------------- F6: a fresh head


@pytest.mark.parametrize("num_classes", [5, 0])
def test_a_fresh_head_on_published_weights_drops_their_calibrator(tmp_path: Path, num_classes: int) -> None:
    """F6: load("resnet10", pretrained=True, num_classes=5) kept the published 10-class head's calibrator
    (the record's): predict_proba applied it, save_weights wrote it, `aperture predict` said "calibrated"."""
    model = aperture_zoo.load("resnet10", pretrained=True, num_classes=num_classes)
    assert (model.calibrator, model.calibrator_tta, model.temperature) == (None, None, None)
    assert not OLD_HEAD & set(model.weights_metadata)  # nothing that described the old head travels on
    if num_classes == 0:
        return
    x = aperture_zoo.preprocess([_image()], model)
    with pytest.warns(UncalibratedWarning):
        probs = predict_proba(model, x)
    with torch.no_grad():
        assert torch.allclose(probs, torch.softmax(model(x), 1), atol=1e-6)  # T = 1
    saved = read_metadata(save_weights(model, tmp_path / "ft" / "model.safetensors"))
    assert not OLD_HEAD & set(saved), sorted(OLD_HEAD & set(saved))
    assert json.loads(saved["label_names"]) == [f"class_{i}" for i in range(5)]
    result = CliRunner().invoke(app, ["predict", _image(), "--model", str(tmp_path / "ft" / "model.safetensors")])
    assert result.exit_code == 0, result.output
    assert ": uncalibrated probabilities" in result.output and ": calibrated probabilities" not in result.output


def test_a_fresh_head_on_a_file_with_its_own_calibrator_takes_none_of_it(tmp_path: Path) -> None:
    """F6 (file metadata): the same for a calibrator, temperature, class names and the dataset (a folder's name
    and record) in the file's own metadata: a re-save of the fresh head wrote that it was trained on 'pets'."""
    path = _tiny(tmp_path, calibrated=True)
    same = aperture_zoo.load(str(path))
    assert same.calibrator is not None and same.spec.label_names == ("cat", "dog")  # its own head keeps them
    fresh = aperture_zoo.load(str(path), num_classes=3)
    assert (fresh.calibrator, fresh.temperature) == (None, None)
    assert fresh.spec.label_names == ("class_0", "class_1", "class_2")
    saved = read_metadata(save_weights(fresh, tmp_path / "fresh.safetensors"))
    assert not {"temperature", "calibrator", "dataset", "data"} & set(saved), saved  # the head was trained on none
    ten = aperture_zoo.load(str(path), num_classes=10)  # fourth try, N5: a fresh 10-class head was named airplane..truck
    assert ten.spec.label_names == tuple(f"class_{i}" for i in range(10))


# --------------------------------------------------------------------------- F5: a features model


def test_class_probabilities_of_a_features_model_are_refused(tmp_path: Path) -> None:
    """F5: predict_proba on num_classes=0 returned a 512-way softmax of the pooled features (so did predict,
    and an export's probabilities output); a saved features file could not even be loaded again."""
    from aperture_zoo.predict import NoHeadError, classify, describe_probabilities

    feats = create_model("resnet10", channels=TINY, num_classes=0).eval()
    x = torch.zeros(1, 3, 32, 32)
    assert feats(x).shape == (1, 8)  # features stay available
    from aperture_zoo.export.onnx_export import ExportedClassifier  # every format's probabilities output

    for call in (lambda: predict_proba(feats, x), lambda: classify(feats, [_image()]),
                 lambda: describe_probabilities(feats), lambda: ExportedClassifier(feats)):
        with pytest.raises(NoHeadError, match=r"no classification head \(num_classes=0.*leave out num_classes=0") as e:
            call()
        assert isinstance(e.value, ApertureError) and "\n" not in str(e.value)
    path = save_weights(feats, tmp_path / "feats" / "model.safetensors")
    assert aperture_zoo.load(str(path)).spec.num_classes == 0  # its empty label_names were "damaged metadata"
    result = CliRunner().invoke(app, ["predict", _image(), "--model", str(path)])
    assert result.exit_code == 2 and result.output.startswith("error: "), result.output
    assert "no classification head" in result.output and "Traceback" not in result.output


# --------------------------------------------------------------------------- F4: the architecture first


def test_weights_of_another_architecture_say_so_first_and_suggest_only_accepted_arguments(tmp_path: Path) -> None:
    """F4: load("resnet22", weights=<2-class resnet10>) complained about the class count and suggested
    num_classes=2 or strict=False (load() accepts no strict)."""
    path = _tiny(tmp_path)
    with pytest.raises(WeightsError) as e:
        aperture_zoo.load("resnet22", weights=str(path))
    text = str(e.value)
    assert "holds weights for architecture 'resnet10', not 'resnet22'" in text, text
    assert "strict" not in text and "num_classes=2" not in text
    # the same architecture with another head: the advice names a call that takes it, and it works
    with pytest.raises(WeightsError, match=r"num_classes=2, or load_weights\(model, PATH, strict=False\)") as e:
        load_weights(create_model("resnet10", channels=TINY), path)
    load_weights(create_model("resnet10", channels=TINY), path, strict=False)
    # the same name, another width (fifth hostile try, L2: "architecture 'resnet10', not 'resnet10'")
    with pytest.raises(WeightsError) as e:
        aperture_zoo.load(str(path), channels=(16, 16, 16, 16))
    text = str(e.value)
    assert "holds a resnet10 of another shape than this model (channels: file" in text and "not 'resnet10'" not in text
    # the advice names a call that works where no model name was given (sixth try: "load it with no model name")
    assert "without a name or shape options, aperture_zoo.load(PATH)" in text and "with no model name" not in text
    assert aperture_zoo.load(str(path)).spec.channels == TINY


# --------------------------------------------------------------------------- F3: a config.json beside bare weights


def _card_folder(tmp_path: Path, name: str, sha: str | None, labels: list[str]) -> Path:
    """A folder of bare weights (no metadata) and a config.json, as a Hub folder has them."""
    source = _tiny(tmp_path)
    folder = tmp_path / name
    folder.mkdir()
    save_file(load_file(str(source)), str(folder / "model.safetensors"))  # bare: no metadata
    spec = create_model("resnet10", channels=TINY, num_classes=2).spec
    config = {"architecture": "resnet10", "model_args": spec.arch_dict(), "label_names": labels,
              "pretrained_cfg": {"mean": list(spec.mean), "std": list(spec.std)}}
    if sha is not None:
        config["files"] = {"model.safetensors": {"sha256": sha}}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_a_config_json_describes_only_the_weights_whose_sha256_it_records(tmp_path: Path) -> None:
    """F3: local-dir: trusted a config.json beside bare weights without checking the SHA-256 it records
    (class names swapped, exit 0); hf-hub: checked it. One rule now (hub.recorded_sha256)."""
    good = _card_folder(tmp_path, "good", None, ["cat", "dog"])
    sha = file_sha256(good / "model.safetensors")
    config = json.loads((good / "config.json").read_text())
    config["files"] = {"model.safetensors": {"sha256": sha}}
    (good / "config.json").write_text(json.dumps(config))
    assert aperture_zoo.load(f"local-dir:{good}").spec.label_names == ("cat", "dog")  # recorded and matching

    other = "0" * 64  # the config was written for other bytes (edited, or the weights were replaced)
    for folder, why in ((_card_folder(tmp_path, "swapped", other, ["dog", "cat"]), f"records {other}"),
                        (_card_folder(tmp_path, "unrecorded", None, ["dog", "cat"]), "records no SHA-256")):
        for ref in (f"local-dir:{folder}", str(folder / "model.safetensors"), str(folder)):
            with pytest.raises(WeightsError, match=f"config.json beside it {why}"):
                aperture_zoo.load(ref)
        result = CliRunner().invoke(app, ["predict", _image(), "--model", f"local-dir:{folder}"])
        assert result.exit_code == 2, result.output
        assert result.output.startswith("error: ") and why in result.output.replace("\n", "")
        assert "refusing to load it" in result.output.replace("\n", "")


def test_the_hub_and_a_folder_read_the_recorded_sha256_by_one_function() -> None:
    """F3: the pin hf-hub: checks and the one a folder's config.json is checked against come from one reader."""
    from aperture_zoo.hub import recorded_sha256

    sha = "A" * 64
    assert recorded_sha256({"files": {"model.safetensors": {"sha256": sha}}}) == sha.lower()
    for bad in (None, [], {"files": []}, {"files": {"model.safetensors": {"sha256": "x"}}}, {"files": {}}):
        assert recorded_sha256(bad) is None
