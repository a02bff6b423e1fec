"""The published weights against their records, like torchvision's test_extended_models.

Every pinned file in model_cards/ must hash to its pin, build the registered architecture with
Table 1's parameter count, carry a full-data final-epoch record, and agree with its card's
config.json. On real CIFAR-10 (APERTURE_CIFAR10_DIR) a stratified 500-image slice of the test set
must score near the recorded accuracy; everywhere, the 30 bundled test images must be classified.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import aperture_zoo
from aperture_zoo.cli import app
from aperture_zoo.pretrained import MODEL_CARDS_DIR
from aperture_zoo.calibrators import Calibrator
from aperture_zoo.catalog import get_weights, list_pretrained
from aperture_zoo.registry import get_spec, list_models
from aperture_zoo.samples import classify_samples, sample_images
from aperture_zoo.files import file_sha256
from aperture_zoo.weights import decode_metadata, read_metadata

PUBLISHED = list_pretrained()


def test_every_model_is_published_and_the_default_tag_is_fast() -> None:
    assert PUBLISHED == [f"{n}.fast" for n in list_models()]
    assert all(get_weights(n).tag == f"{n}.fast" for n in list_models())


@pytest.mark.parametrize("tag", PUBLISHED)
def test_published_file_matches_its_record_and_card(tag: str) -> None:
    record = get_weights(tag)
    spec = get_spec(record.arch)
    path = MODEL_CARDS_DIR / record.arch / record.filename
    assert file_sha256(path) == record.sha256
    meta = decode_metadata(read_metadata(path))
    assert meta["arch"] == record.arch and meta["num_params"] == spec.report_params
    assert meta["subset"] is None and meta["test_subset"] is None and meta["val_split"] == 0  # full data
    assert meta["recipe"]["name"] == record.recipe and meta["epochs"] == meta["recipe"]["epochs"] == record.epochs
    assert meta["test_top1"] == record.top1 and meta["train_device"] == record.train_device
    assert meta["wall_time_s"] == pytest.approx(record.wall_time_s, abs=1e-3)
    assert 93.0 <= record.top1 <= 100 and record.top1 > spec.report_top1_20ep
    rows = [json.loads(x) for x in (path.parent / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == record.epochs and rows[-1]["test_top1"] == pytest.approx(record.top1, abs=1e-3)
    config = json.loads((path.parent / "config.json").read_text())
    assert config["files"]["model.safetensors"]["sha256"] == record.sha256
    assert config["metrics"]["top1"] == record.top1 and config["trained"] is True
    # calibration, flip TTA and corruption figures: the record is eval.json's, rounded
    ev = json.loads((path.parent / "eval.json").read_text())
    assert ev["weights_sha256"] == record.sha256 and ev["calibration_num_images"] == 10000
    assert record.calibrator == Calibrator.from_dict(ev["calibrator"]) and "cross-fitted" in ev["calibrator_fitted_on"]
    assert record.calibrator_tta == Calibrator.from_dict(ev["tta_calibration"]["calibrator"])
    assert record.temperature == round(ev["temperature_scaling"]["temperature"], 4) and 0.3 < record.temperature < 3
    assert record.top1_tta == round(ev["top1_by_tta"]["flip"], 2)
    assert record.measured_images == ev["num_images"] == ev["calibration_num_images"]  # what `aperture list` says
    assert record.ece == round(100 * ev["ece"], 2) and record.ece_calibrated == round(100 * ev["ece_calibrated"], 2)
    assert record.ece_temperature == round(100 * ev["temperature_scaling"]["ece"], 2)
    assert record.ece_tta_calibrated == round(100 * ev["tta_calibration"]["ece_calibrated"], 2)
    assert record.corruption_top1 == round(ev["corruptions"]["mean"], 2)
    assert config["metrics"]["calibration"]["calibrator"] == ev["calibrator"]
    # the calibrator is chosen by held-out NLL: it never has a worse one than the temperature's
    assert ev["nll_calibrated"] <= ev["temperature_scaling"]["nll"]
    assert ev["tta_calibration"]["nll_calibrated"] <= ev["tta_calibration"]["temperature_scaling"]["nll"]


def test_load_takes_a_tag_or_the_default_and_unknown_tags_list_the_published() -> None:
    from aperture_zoo.catalog import UnknownWeightsError

    a = aperture_zoo.load("resnet10.fast")
    b = aperture_zoo.load("resnet10", pretrained=True)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    with pytest.raises(UnknownWeightsError, match="no published weights 'resnet10.paper'; published: resnet10.fast"):
        aperture_zoo.load("resnet10.paper")
    x = get_weights("resnet10").transforms()(sample_images()[0][0])
    assert x.shape == (1, 3, 32, 32)


@pytest.mark.realdata
@pytest.mark.parametrize("name", ["resnet10", "resnet22"])
def test_published_accuracy_reproduces_on_real_test_images(name: str, real_cifar) -> None:
    from aperture_zoo.data import load_split, subset
    from aperture_zoo.train.evaluate import evaluate

    recorded = decode_metadata(read_metadata(MODEL_CARDS_DIR / name / "model.safetensors"))["test_top1"]
    result = evaluate(aperture_zoo.load(name, pretrained=True), subset(load_split("test", real_cifar), 500, 0))
    # 500 images: the binomial standard error at 94 % is ~1.1 points; 4 points is > 3.5 sigma
    assert abs(result.top1 - recorded) < 4.0


@pytest.mark.realdata
@pytest.mark.slow
@pytest.mark.full_test_set  # 20,000 forward passes per model on the CPU: `make test-published`
@pytest.mark.parametrize("name", list_models())
def test_the_published_calibrators_keep_every_prediction_on_all_test_images(name: str, real_cifar) -> None:
    """On all 10,000 test images (and their mirrors), the argmax of the calibrated probabilities is
    the argmax of the logits, for the plain and the flip-TTA calibrator, through predict_proba too."""
    from aperture_zoo.data import load_split
    from aperture_zoo.train.evaluate import evaluate_sums

    model = aperture_zoo.load(name, pretrained=True)
    test = load_split("test", real_cifar)
    collected: list = []
    evaluate_sums(model, torch.as_tensor(test.images), torch.as_tensor(test.labels), torch.tensor(model.spec.mean),
                  torch.tensor(model.spec.std), model.spec.num_classes, 500, logits_out=collected, mirror=True)
    plain = torch.cat([p for p, _ in collected]).numpy()
    flip = 0.5 * (plain + torch.cat([m for _, m in collected]).numpy())
    assert model.calibrator is not None and model.calibrator_tta is not None
    for cal, logits in ((model.calibrator, plain), (model.calibrator_tta, flip)):
        probs = cal.apply(logits)
        assert (probs.argmax(1) == logits.argmax(1)).all(), cal.kind
    x = aperture_zoo.preprocess(test.images[:500].transpose(0, 2, 3, 1), model)
    with torch.no_grad():
        for tta in ("none", "flip"):
            want = (model(x) + model(x.flip(3)) if tta == "flip" else model(x)).argmax(1)
            assert torch.equal(aperture_zoo.predict_proba(model, x, tta=tta).argmax(1), want)


def test_bundled_images_are_real_cifar10_test_images_with_labels() -> None:
    images = sample_images()
    assert len(images) == 30
    labels = [label for _, label in images]
    assert sorted(set(labels)) == sorted(aperture_zoo.CIFAR10_CLASSES)
    assert all(labels.count(c) == 3 for c in set(labels))
    assert all(p.is_file() and p.stat().st_size < 8000 for p, _ in images)


def test_the_main_job_classifies_the_bundled_images() -> None:
    (result,) = classify_samples(["resnet10"])
    assert result.published and len(result.predictions) == 30
    assert result.accuracy >= 80.0  # a 93.8 % model; 24 of 30 is far below what it does
    assert all(0.0 < p <= 1.0 for _, _, p in result.predictions)


def test_samples_show_the_calibrated_probability_predict_gives() -> None:
    """Regression: `aperture samples` printed the raw softmax while `predict` printed calibrated probabilities."""
    from aperture_zoo.predict import classify

    (result,) = classify_samples(["resnet10"])
    assert result.temperature == get_weights("resnet10").temperature
    rows, _ = classify(aperture_zoo.load("resnet10", pretrained=True), [p for p, _ in sample_images()[:4]], top_k=1)
    assert [(r["top"][0]["label"], r["top"][0]["probability"]) for r in rows] == [
        (label, pytest.approx(prob, abs=1e-6)) for _, label, prob in result.predictions[:4]]
    shown = CliRunner().invoke(app, ["samples", "resnet10", "--show", "resnet10"])
    assert shown.exit_code == 0 and "calibrated probability, temperature 0.664" in " ".join(shown.stdout.split())


def test_preprocess_is_the_onnx_rule_then_the_models_normalisation(tmp_path) -> None:
    from PIL import Image

    from aperture_zoo.images import load_image
    from aperture_zoo.transforms import preprocess

    rng = np.random.default_rng(0)
    wide = tmp_path / "wide.png"
    Image.fromarray(rng.integers(0, 256, (20, 50, 3), dtype=np.uint8)).save(wide)
    grey = tmp_path / "grey.png"
    Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8), "L").save(grey)
    model = aperture_zoo.create_model("resnet10")
    x = preprocess([wide, grey, Image.open(grey)], model)
    assert x.shape == (3, 3, 32, 32) and x.dtype == torch.float32
    pixels = torch.from_numpy(np.stack([load_image(wide)[0], load_image(grey)[0]])).permute(0, 3, 1, 2) / 255.0
    mean = torch.tensor(model.spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(model.spec.std).view(1, 3, 1, 1)
    assert torch.allclose(x[:2], (pixels - mean) / std)
    assert torch.equal(x[1], x[2])  # a path and an open pillow image give the same input


def test_preprocess_rejects_what_is_not_an_image(tmp_path) -> None:
    from aperture_zoo.images import ImageError
    from aperture_zoo.transforms import preprocess

    with pytest.raises(ImageError, match="cannot use array float64"):
        preprocess(np.zeros((32, 32, 3)))
    with pytest.raises(ImageError, match="no images given"):
        preprocess([])
    junk = tmp_path / "notes.png"
    junk.write_text("not an image")
    with pytest.raises(ImageError, match="could not be decoded"):
        preprocess(junk)


def test_a_runs_card_never_replaces_the_published_weights(tmp_path) -> None:
    """Regression: `aperture card NAME --run RUN` used to overwrite model_cards/NAME's weights silently."""
    import shutil

    from aperture_zoo.cards import CardError, write_card
    from hub_fixtures import random_weights

    folder = tmp_path / "resnet10"
    shutil.copytree(MODEL_CARDS_DIR / "resnet10", folder)
    run = tmp_path / "run"
    random_weights(run / "model.safetensors", "resnet10", init_seed=5)
    before = file_sha256(folder / "model.safetensors")
    with pytest.raises(CardError, match="holds the published resnet10 weights.*--out DIR"):
        write_card("resnet10", folder, run_dir=run)
    assert file_sha256(folder / "model.safetensors") == before
    write_card("resnet10", tmp_path / "elsewhere", run_dir=run)  # anywhere else is fine
    card = (tmp_path / "elsewhere" / "README.md").read_text()
    # found by a user: a run's card told readers to load the *published* weights
    assert 'load("resnet10", weights="model.safetensors")' in card and "pretrained=True" not in card
    assert 'load("resnet10", pretrained=True)' in (MODEL_CARDS_DIR / "resnet10" / "README.md").read_text()


def test_listing_and_push_use_only_the_published_weights(tmp_path, monkeypatch) -> None:
    from aperture_zoo.hub import HubError
    from aperture_zoo.publish import push
    from aperture_zoo.summary import model_info, zoo_rows
    from hub_fixtures import random_weights

    mine = random_weights(tmp_path / "mine" / "resnet10" / "model.safetensors", "resnet10", init_seed=6)
    monkeypatch.setenv("APERTURE_WEIGHTS_DIR", str(tmp_path / "mine"))
    assert zoo_rows("resnet10")[0]["top1"] == get_weights("resnet10").top1  # the record's, not the experiment's
    info = model_info("resnet10")
    assert info["weights"]["path"] == str(mine) and info["weights_published"] is False
    cards = tmp_path / "cards"
    (cards / "resnet10").mkdir(parents=True)
    (cards / "resnet10" / "model.safetensors").write_bytes(mine.read_bytes())  # a replaced checkout file
    with pytest.raises(HubError, match="only the zoo's published weights.*--weights"):
        push("resnet10", "zoo/resnet10", token="tok", cards_dir=cards)


def test_an_architecture_without_a_record_says_no_published_weights(monkeypatch) -> None:
    from aperture_zoo import registry
    from aperture_zoo.pretrained import NoPretrainedWeightsError, PublishedWeightsUnavailableError

    tiny = get_spec("resnet10").replace(name="tiny10", channels=(8, 8, 8, 8))
    monkeypatch.setitem(registry._REGISTRY, "tiny10", tiny)
    with pytest.raises(NoPretrainedWeightsError, match="no published weights for tiny10") as info:
        aperture_zoo.load("tiny10", pretrained=True)
    assert not isinstance(info.value, PublishedWeightsUnavailableError)


@pytest.mark.parametrize("tag", PUBLISHED)
def test_each_published_calibrator_is_the_one_its_eval_json_records_rebuilt_from_its_numbers(tag: str) -> None:
    """The catalog writes each calibrator as its five fitted numbers (``_adaptive_spline``): built from
    eval.json's numbers now, they make the calibrator eval.json records, and the record's own."""
    from aperture_zoo import catalog

    record = get_weights(tag)
    ev = json.loads((MODEL_CARDS_DIR / record.arch / "eval.json").read_text())
    for cal, built in ((ev["calibrator"], record.calibrator), (ev["tta_calibration"]["calibrator"], record.calibrator_tta)):
        w = cal["weights"]
        again = catalog._adaptive_spline(cal["temperature"], w["log_margin"], w["entropy"], tuple(cal["knots"]),
                                         tuple(cal["slopes"]))
        assert again == Calibrator.from_dict(cal) == built and again.to_dict() == cal


def test_a_fresh_interpreter_builds_the_published_calibrators_of_eval_json() -> None:
    """The records are built when the catalog is first imported: in a new process, as a user's program
    starts, each published calibrator (plain and flip-TTA) is the one its eval.json records."""
    import subprocess
    import sys

    code = ("import json; from aperture_zoo.catalog import get_weights, list_pretrained; "
            "print(json.dumps({t: [get_weights(t).calibrator.to_dict(), get_weights(t).calibrator_tta.to_dict()] "
            "for t in list_pretrained()}))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          cwd=MODEL_CARDS_DIR.parent)
    assert proc.returncode == 0, proc.stderr
    built = json.loads(proc.stdout)
    assert sorted(built) == sorted(PUBLISHED)
    for tag, (plain, tta) in built.items():
        ev = json.loads((MODEL_CARDS_DIR / get_weights(tag).arch / "eval.json").read_text())
        assert Calibrator.from_dict(plain) == Calibrator.from_dict(ev["calibrator"]), tag
        assert Calibrator.from_dict(tta) == Calibrator.from_dict(ev["tta_calibration"]["calibrator"]), tag


def test_a_records_transforms_normalise_with_its_own_models_mean_and_std(monkeypatch) -> None:
    """``Weights.transforms()`` of a registered record (a model trained with other statistics) uses that
    model's mean and std, not CIFAR-10's."""
    import dataclasses

    from aperture_zoo import catalog, registry

    spec = get_spec("resnet10").replace(name="gray10", mean=(0.5, 0.5, 0.5), std=(0.25, 0.2, 0.1))
    monkeypatch.setitem(registry._REGISTRY, "gray10", spec)
    record = dataclasses.replace(catalog.get_weights("resnet10"), tag="gray10.mine")
    monkeypatch.setitem(catalog._WEIGHTS, "gray10.mine", record)
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)  # H x W x RGB
    want = (torch.from_numpy(image).permute(2, 0, 1).double() / 255 - torch.tensor([0.5, 0.5, 0.5])[:, None, None]) \
        / torch.tensor([0.25, 0.2, 0.1])[:, None, None]
    assert torch.allclose(get_weights("gray10.mine").transforms()(image)[0].double(), want, atol=1e-5)


def test_the_readme_calibration_tables_are_the_eval_json_figures(monkeypatch) -> None:
    """No figure in the README's calibration tables is typed by hand: they are the bench's table printer's
    output from the committed eval.json files (regenerate with ``bench/published_figures.py --table``)."""
    import importlib

    root = MODEL_CARDS_DIR.parent
    monkeypatch.syspath_prepend(str(root / "bench"))
    tables = importlib.import_module("published_figures").table(MODEL_CARDS_DIR, list_models()).split("\n\n")
    readme = (root / "README.md").read_text()
    assert len(tables) == 3 and all(t in readme for t in tables)
    assert "calibration_reliability.png" in readme
