"""Calibrated probabilities, flip TTA in every runtime, corruptions and `predict` without ONNX."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from aperture_zoo.calibration import (
    TemperatureError,
    brier,
    check_temperature,
    cross_fit,
    ece,
    fit_calibrator,
    fit_temperature,
    nll,
    softmax,
    stratified_halves,
)
from aperture_zoo.cli import app
from aperture_zoo.corruptions import CORRUPTIONS, CorruptionError, corrupt, parse_corruptions
from aperture_zoo.model import create_model

SMALL = dict(channels=(8, 16, 16, 32))


# -- temperature scaling and scores ---------------------------------------------------------------
def test_fit_recovers_a_known_temperature_on_synthetic_logits() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6000, 10)) * 3
    for true_t in (0.6, 1.7):  # labels drawn from softmax(logits / T): NLL is minimal at T
        p = softmax(logits, true_t)
        labels = (p.cumsum(1) > rng.random((len(p), 1))).argmax(1)
        assert fit_temperature(logits, labels) == pytest.approx(true_t, rel=0.05)


@pytest.mark.parametrize("true_t", [0.9, 1.0])
def test_fitted_temperature_is_the_nll_minimum_of_a_dense_grid(true_t: float) -> None:
    """Near T = 1 too (the search's first probes bracket it): the fit is the grid's minimum, not a nearby point."""
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(400, 10)) * 3
    p = softmax(logits, true_t)
    labels = (p.cumsum(1) > rng.random((len(p), 1))).argmax(1)
    grid = np.exp(np.linspace(np.log(0.4), np.log(2.5), 1001))
    z = logits[None] / grid[:, None, None]  # the NLL at every grid temperature, computed here by hand
    z = z - z.max(axis=2, keepdims=True)
    losses = (np.log(np.exp(z).sum(axis=2)) - z[:, np.arange(len(labels)), labels]).mean(axis=1)
    i = int(np.argmin(losses))
    assert 0 < i < len(grid) - 1  # an inner minimum
    assert fit_temperature(logits, labels) == pytest.approx(grid[i], rel=2e-3)


def test_scores_on_hand_checkable_cases() -> None:
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.7, 0.3]])
    labels = np.array([0, 1, 1, 0])
    # bins (15 equal): 0.9 -> bin 13 (acc 1), 0.6 -> bin 8 (acc 0), 0.8 -> bin 11 (acc 1), 0.7 -> bin 10 (acc 1)
    assert ece(probs, labels) == pytest.approx((0.1 + 0.6 + 0.2 + 0.3) / 4)
    assert brier(probs, labels) == pytest.approx((0.02 + 0.72 + 0.08 + 0.18) / 4)
    assert ece(np.eye(3), np.arange(3)) == 0.0 and brier(np.eye(3), np.arange(3)) == 0.0
    logits = np.log(probs)
    assert nll(logits, labels) == pytest.approx(-np.mean(np.log([0.9, 0.4, 0.8, 0.7])))
    assert nll(np.zeros((5, 4)), np.zeros(5, int)) == pytest.approx(np.log(4))


def test_cross_fit_never_scores_on_the_images_it_fitted() -> None:
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(10), 41)
    a, b = stratified_halves(labels)
    assert not set(a) & set(b) and len(a) + len(b) == len(labels)
    assert all(abs((labels[a] == c).sum() - (labels[b] == c).sum()) <= 1 for c in range(10))
    logits = rng.normal(size=(len(labels), 10)) + 4 * np.eye(10)[labels]
    out = cross_fit(logits, labels, kinds=("temperature",))
    t_a, t_b = out["temperature"]["halves"]
    assert t_a == pytest.approx(fit_temperature(logits[a], labels[a]))
    assert out["temperature"]["ece"] == pytest.approx(np.mean([ece(softmax(logits[b], t_a), labels[b]),
                                                               ece(softmax(logits[a], t_b), labels[a])]))


def _halves_with_different_temperatures() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Logits whose two stratified halves want very different temperatures (one half scaled x6)."""
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(10), 60)
    a, b = stratified_halves(labels)
    logits = rng.normal(size=(len(labels), 10)) + 2.5 * np.eye(10)[labels]
    logits[a] *= 3.0
    logits[b] *= 0.5
    return logits, labels, a, b


def test_calibration_under_shift_scores_corrupted_logits_with_the_clean_halves_fits() -> None:
    """eval.json's ``calibration_under_shift``: each corrupted copy is scored with the calibrators fitted
    on the clean images (each half with the other half's fit); the clean images themselves, passed as a
    "corruption", give back the clean figures."""
    from aperture_zoo.train.calibrate import logit_figures

    logits, labels, a, b = _halves_with_different_temperatures()
    dim = 0.3 * logits
    out = logit_figures(logits, None, labels, torch.nn.Identity(), shifted={"copy": (logits, None), "dim": (dim, None)})
    shift = out["calibration_under_shift"]
    assert shift["fitted_on"] == f"clean test images ({out['calibrator_fitted_on']})"
    copy, dimmed = shift["conditions"]["copy"], shift["conditions"]["dim"]
    assert copy["num_images"] == dimmed["num_images"] == len(labels)
    assert copy["raw"]["ece"] == pytest.approx(out["ece"]) and copy["calibrator"]["nll"] == pytest.approx(out["nll_calibrated"])
    assert copy["temperature"]["ece"] == pytest.approx(out["temperature_scaling"]["ece"])
    t_a, t_b = out["temperature_scaling"]["halves"]  # fitted on clean half a, on clean half b
    assert dimmed["temperature"]["ece"] == pytest.approx(np.mean([ece(softmax(dim[b], t_a), labels[b]),
                                                                  ece(softmax(dim[a], t_b), labels[a])]))


def test_eval_prints_the_calibration_figures_it_measured_and_why_none_was_fitted() -> None:
    """The printed line is eval.json's figures (ECE in %, NLL, Brier), and says why no calibrator was fitted;
    an eval.json from before calibrators (one temperature) prints its temperature's figures."""
    from aperture_zoo.calibration import MIN_HALF
    from aperture_zoo.train.calibrate import logit_figures
    from aperture_zoo.train.evaluate import format_robustness

    logits, labels, _, _ = _halves_with_different_temperatures()
    few = np.concatenate([np.flatnonzero(labels == c)[:3] for c in range(10)])  # 30 images: too few to cross-fit
    out = logit_figures(logits[few], None, labels[few], torch.nn.Identity())
    p = softmax(logits[few])
    assert format_robustness(out) == [
        f"calibration (15-bin ECE / NLL / Brier): {100 * ece(p, labels[few]):.2f}% / {nll(logits[few], labels[few]):.4f} / "
        f"{brier(p, labels[few]):.4f}; no calibrator: not fitted: too few images to cross-fit a calibrator (each half "
        f"needs at least {MIN_HALF})"]
    old = {"ece": 0.0512, "nll": 0.41234, "brier": 0.2, "ece_calibrated": 0.01, "nll_calibrated": 0.3,
           "brier_calibrated": 0.15, "temperature": 1.23456, "temperature_fitted_on": "validation split"}
    assert format_robustness(old) == ["calibration (15-bin ECE / NLL / Brier): 5.12% / 0.4123 / 0.2000 -> with "
                                      "temperature 1.2346: 1.00% / 0.3000 / 0.1500 (temperature validation split)"]
    every = logit_figures(logits, None, labels, torch.nn.Identity())  # enough images: cross-fitted
    t = every["temperature_scaling"]
    assert format_robustness(every)[2] == (f"  one temperature ({t['temperature']:.4f}), for comparison: "
                                           f"{100 * t['ece']:.2f}% / {t['nll']:.4f} / {t['brier']:.4f}")


def test_eval_reliability_and_tta_figures_score_each_half_with_the_other_halfs_fit() -> None:
    """eval.json's reliability bins and flip-TTA calibration are held out, like its ECE; the flip-TTA
    figures come from calibrators fitted on flip-averaged logits (what the --tta flip file carries)."""
    from aperture_zoo.calibration import Calibrator, reliability_bins
    from aperture_zoo.train.calibrate import logit_figures

    logits, labels, a, b = _halves_with_different_temperatures()
    mirrored = logits[:, ::-1].copy()
    out = logit_figures(logits, mirrored, labels, torch.nn.Identity(), tta=False)
    t_a, t_b = out["temperature_scaling"]["halves"]  # fitted on a, fitted on b
    assert t_a != pytest.approx(t_b, rel=0.2)
    held_out, own = np.empty_like(logits), np.empty_like(logits)
    held_out[b], held_out[a] = softmax(logits[b], t_a), softmax(logits[a], t_b)
    own[a], own[b] = softmax(logits[a], t_a), softmax(logits[b], t_b)
    same = lambda x, y: all(x[k] == pytest.approx(y[k], abs=1e-12) for k in x)  # noqa: E731
    assert same(out["reliability"]["temperature"], reliability_bins(held_out, labels))
    assert not same(out["reliability"]["temperature"], reliability_bins(own, labels))
    c_a, c_b = (Calibrator.from_dict(h["calibrator"]) for h in out["calibrator_halves"])
    held_out[b], held_out[a] = c_a.apply(logits[b]), c_b.apply(logits[a])
    assert same(out["reliability"]["calibrated"], reliability_bins(held_out, labels))
    assert out["ece_calibrated"] == pytest.approx(np.mean([ece(held_out[b], labels[b]), ece(held_out[a], labels[a])]))
    avg = 0.5 * (logits + mirrored)
    tta = out["tta_calibration"]
    assert tta["ece"] == pytest.approx(ece(softmax(avg), labels))
    f_a, f_b = (Calibrator.from_dict(h["calibrator"]) for h in tta["calibrator_halves"])
    assert f_a == fit_calibrator(avg[a], labels[a])
    assert tta["nll_calibrated"] == pytest.approx(np.mean([nll(np.log(f_a.apply(avg[b])), labels[b]),
                                                          nll(np.log(f_b.apply(avg[a])), labels[a])]))
    assert Calibrator.from_dict(tta["calibrator"]) == fit_calibrator(avg, labels, "cross-fitted on two stratified "
                                                                                    "halves of the test set").rounded()
    assert out["top1_by_tta"] == {"none": pytest.approx(100 * (logits.argmax(1) == labels).mean()),
                                  "flip": pytest.approx(100 * (avg.argmax(1) == labels).mean())}
    assert out["ece"] == pytest.approx(ece(softmax(logits), labels))  # without tta: the plain logits' figures


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), "warm", None])
def test_a_temperature_must_be_finite_and_positive(bad: object) -> None:
    with pytest.raises(TemperatureError, match="above 0"):
        check_temperature(bad)


def test_predict_proba_is_softmax_of_logits_over_t_and_says_once_when_uncalibrated() -> None:
    """Weights without a temperature: the plain softmax (T = 1), like `aperture predict`, said once per model."""
    import warnings

    import aperture_zoo
    from aperture_zoo.predict import UncalibratedWarning

    torch.manual_seed(0)
    model = create_model("resnet10", **SMALL).eval()
    x = torch.randn(3, 3, 32, 32)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        first = aperture_zoo.predict_proba(model, x)
        aperture_zoo.predict_proba(model, x)
    assert [type(w.message) for w in said] == [UncalibratedWarning] and "T = 1" in str(said[0].message)
    with torch.no_grad():
        torch.testing.assert_close(first, model(x).softmax(-1))
    model.temperature = 0.5
    with torch.no_grad():
        want = (model(x) / 0.5).softmax(-1)
        flip = ((model(x) + model(x.flip(3))) / 2 / 0.5).softmax(-1)
    torch.testing.assert_close(aperture_zoo.predict_proba(model, x), want)
    torch.testing.assert_close(aperture_zoo.predict_proba(model, x, tta="flip"), flip)


# -- ONNX: probabilities output, TTA graph, metadata ---------------------------------------------
@pytest.fixture(scope="module")
def small_model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model("resnet10", **SMALL).eval()
    with torch.no_grad():
        model.fc.weight.normal_(0, 0.5)
    return model


@pytest.fixture(scope="module")
def tta_file(small_model: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from aperture_zoo.export.onnx_export import to_onnx

    return to_onnx(small_model, tmp_path_factory.mktemp("tta") / "m.tta.onnx", temperature=0.6, tta=True,
                   exporter="legacy")


def test_tta_graph_is_the_mean_of_two_pytorch_passes_and_probabilities_are_calibrated(
        tta_file: Path, small_model: torch.nn.Module) -> None:
    from aperture_zoo.export.onnx_export import read_metadata
    from aperture_zoo.export.runtime import create_session

    session = create_session(tta_file, "cpu")
    assert [o.name for o in session.get_outputs()] == ["logits", "probabilities"]
    pixels = np.random.default_rng(0).random((5, 3, 32, 32), dtype=np.float32)
    logits, probs = session.run(None, {"pixel_values": pixels})
    mean = torch.tensor(small_model.spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(small_model.spec.std).view(1, 3, 1, 1)
    x = (torch.from_numpy(pixels) - mean) / std
    with torch.no_grad():
        want = 0.5 * (small_model(x) + small_model(x.flip(3)))
    np.testing.assert_allclose(logits, want.numpy(), atol=1e-4)
    np.testing.assert_allclose(probs, softmax(logits, 0.6), atol=1e-6)
    meta = read_metadata(tta_file)
    assert meta["tta"] == "flip" and float(meta["temperature"]) == 0.6


def test_tta_file_passes_validation_against_eval_tta(tta_file: Path, small_model: torch.nn.Module) -> None:
    from aperture_zoo.export.validate import validate

    report = validate(tta_file, small_model, provider="cpu", batch_sizes=(3,))
    assert report.passed, report.failures
    assert report.comparisons[-1].max_prob_diff is not None and report.comparisons[-1].max_prob_diff < 1e-5
    plain = create_model("resnet10", **SMALL).eval()  # other weights: the check can fail
    assert not validate(tta_file, plain, provider="cpu", batch_sizes=(3,)).passed


def test_classifier_uses_the_files_probabilities_and_refuses_a_bad_temperature(
        tta_file: Path, tmp_path: Path) -> None:
    import onnx

    from aperture_zoo.export.onnx_export import set_metadata
    from aperture_zoo.export.predict import OnnxClassifier

    clf = OnnxClassifier(tta_file, provider="cpu")
    pixels = np.random.default_rng(1).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    assert clf.calibrated and clf.tta == "flip" and "temperature 0.6" in clf.describe()
    np.testing.assert_allclose(clf.predict_proba(pixels), softmax(clf.logits(pixels), 0.6), atol=1e-6)

    proto = onnx.load(str(tta_file))
    for bad in ("0", "-2", "nan", "inf"):
        set_metadata(proto, {"temperature": bad})
        onnx.save(proto, str(tmp_path / "bad.onnx"))
        with pytest.raises(TemperatureError, match="temperature in"):
            OnnxClassifier(tmp_path / "bad.onnx", provider="cpu")

    old = onnx.load(str(tta_file))  # an older export: logits only, no temperature
    del old.graph.output[1]
    del old.metadata_props[:]
    onnx.save(old, str(tmp_path / "old.onnx"))
    legacy = OnnxClassifier(tmp_path / "old.onnx", provider="cpu")
    assert not legacy.calibrated and "uncalibrated" in legacy.describe()
    np.testing.assert_allclose(legacy.predict_proba(pixels), softmax(legacy.logits(pixels)), atol=1e-6)


def test_export_tta_other_than_flip_or_none_is_a_one_line_error() -> None:
    result = CliRunner().invoke(app, ["export", "resnet10", "--onnx", "--random-init", "--tta", "five-crop"])
    assert result.exit_code == 2
    assert "--tta must be 'flip' or 'none', got 'five-crop'" in result.output
    assert len(result.output.strip().splitlines()) == 1


# -- corruptions ----------------------------------------------------------------------------------
def test_corruption_severities_are_monotone_on_a_fixed_image() -> None:
    from aperture_zoo.images import load_image
    from aperture_zoo.samples import sample_images

    image = load_image(sample_images()[0][0])[0].transpose(2, 0, 1)[None]
    for name in CORRUPTIONS:
        change = [np.abs(corrupt(image, name, s).astype(float) - image).mean() for s in range(1, 6)]
        assert all(a < b for a, b in zip(change, change[1:])), (name, change)
        assert corrupt(image, name, 3).dtype == np.uint8 and np.array_equal(corrupt(image, name, 3), corrupt(image, name, 3))


def test_corruption_parameters_follow_cifar10c() -> None:
    image = np.full((1, 3, 4, 4), 100, np.uint8)
    image[0, :, 0, 0] = 200  # contrast: (x - mean) * c + mean, per channel
    mean = (200 + 15 * 100) / 16
    assert corrupt(image, "contrast", 5)[0, 0, 0, 0] == int(((200 - mean) * 0.15 + mean) / 255 * 255)
    grey = np.full((1, 3, 2, 2), 51, np.uint8)  # brightness: V += 0.3 keeps a grey pixel grey
    assert (corrupt(grey, "brightness", 5) == int((0.2 + 0.3) * 255)).all()
    black = np.zeros((1, 3, 2, 2), np.uint8)
    assert (corrupt(black, "brightness", 1) == int(0.05 * 255)).all()


@pytest.mark.parametrize("spec, message", [
    ("fog", "unknown corruption 'fog'"), ("contrast:6", "severity must be 1-5, got 6"),
    ("contrast:0", "severity must be 1-5, got 0"), ("contrast:x", "severity must be 1-5"), (",", "names no corruption"),
])
def test_bad_corruptions_are_one_line_errors(spec: str, message: str) -> None:
    with pytest.raises(CorruptionError, match=message):
        parse_corruptions(spec)


def test_parse_corruptions() -> None:
    assert len(parse_corruptions("all")) == 25
    assert parse_corruptions("contrast:2,brightness") == [("contrast", 2)] + [("brightness", s) for s in range(1, 6)]


# -- `aperture eval` with calibration and corruptions ----------------------------------------------
def test_cli_eval_reports_calibration_tta_and_corruptions(synthetic_cifar: Path, tmp_path: Path) -> None:
    from aperture_zoo.weights import save_weights

    torch.manual_seed(0)
    weights = save_weights(create_model("resnet10", **SMALL), tmp_path / "model.safetensors")
    result = CliRunner().invoke(app, [
        "eval", "resnet10", "--weights", str(weights), "--data-dir", str(synthetic_cifar), "--no-download",
        "--tta", "--corruptions", "contrast:1,contrast:5", "--corruption-images", "50", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "eval.json").read_text())
    for key in ("ece", "classwise_ece", "nll", "brier", "ece_calibrated", "classwise_ece_calibrated", "nll_calibrated",
                "brier_calibrated"):
        assert np.isfinite(report[key]), key
    assert np.isfinite(report["temperature_scaling"]["temperature"]) and report["calibrator"]["kind"]
    assert report["nll_calibrated"] <= report["nll"] + 0.05  # fitted on the other half: close to, or below
    assert "cross-fitted" in report["calibrator_fitted_on"]
    assert report["top1_by_tta"]["flip"] == pytest.approx(report["top1"])
    c = report["corruptions"]
    assert c["num_images"] == 50 and set(c["top1"]["contrast"]) == {"1", "5"} and c["worst"] == "contrast"
    assert (tmp_path / "reliability.png").stat().st_size > 0


def test_cli_eval_refuses_unknown_corruptions_before_loading_anything(synthetic_cifar: Path) -> None:
    result = CliRunner().invoke(app, ["eval", "resnet10", "--pretrained", "--corruptions", "contrast:9",
                                      "--data-dir", str(synthetic_cifar)])
    assert result.exit_code == 2 and "severity must be 1-5, got 9" in result.output
    assert len(result.output.strip().splitlines()) == 1


# -- `aperture predict` without --onnx -------------------------------------------------------------
def test_predict_without_onnx_uses_the_published_resnet22_calibrated() -> None:
    import aperture_zoo
    from aperture_zoo.samples import sample_images

    path, label = sample_images()[0]
    result = CliRunner().invoke(app, ["predict", str(path), "--json"])
    assert result.exit_code == 0, result.output
    cal = aperture_zoo.get_weights("resnet22").calibrator
    assert f"resnet22.fast: calibrated probabilities ({cal.describe()})" in result.output
    rows = json.loads(result.output[result.output.index("["):])
    model = aperture_zoo.load("resnet22", pretrained=True)
    assert model.temperature == aperture_zoo.get_weights("resnet22").temperature is not None
    want = aperture_zoo.predict_proba(model, [path])[0]
    assert rows[0]["top"][0]["label"] == label
    assert rows[0]["top"][0]["probability"] == pytest.approx(float(want.max()), abs=1e-6)
    bad = CliRunner().invoke(app, ["predict", str(path), "--tta", "ten"])
    assert bad.exit_code == 2 and "--tta must be 'flip' or 'none'" in bad.output


def test_one_image_gets_the_same_probabilities_from_predict_and_both_onnx_files(tmp_path: Path) -> None:
    """`aperture predict IMG` (published resnet22, PyTorch) and `--onnx` of its exports, with and
    without flip TTA: the same calibrated probabilities within 1e-4 (the page matches the ONNX files
    in test_web_demo)."""
    from PIL import Image

    import aperture_zoo
    from aperture_zoo.export.pipeline import export_model
    from aperture_zoo.samples import sample_images

    source, _ = sample_images()[13]  # a deer the mirror changes the answer for (by 0.07)
    image = tmp_path / "photo.png"  # a size and shape people upload: resized to 32x32 on every path
    Image.open(source).convert("RGB").resize((97, 61), Image.Resampling.BICUBIC).save(image)
    model = aperture_zoo.load("resnet22", pretrained=True)
    for tta in (False, True):
        export_model(model, tmp_path, exporter="legacy", run_validation=False, tta=tta)

    def probabilities(*args: str) -> dict[str, float]:
        result = CliRunner().invoke(app, ["predict", str(image), "--top-k", "10", "--json", *args])
        assert result.exit_code == 0, result.output
        rows = json.loads(result.output[result.output.index("["):])
        return {t["label"]: t["probability"] for t in rows[0]["top"]}

    runs = {"torch": probabilities(), "torch-flip": probabilities("--tta", "flip"),
            "onnx": probabilities("--onnx", str(tmp_path / "resnet22.onnx")),
            "onnx-flip": probabilities("--onnx", str(tmp_path / "resnet22.tta.onnx"))}
    for a, b in (("torch", "onnx"), ("torch-flip", "onnx-flip")):
        assert runs[a].keys() == runs[b].keys() and len(runs[a]) == 10
        assert max(abs(runs[a][k] - runs[b][k]) for k in runs[a]) < 1e-4, (a, b)
    # not vacuous: TTA and the temperature each move the answer by far more than the tolerance
    assert max(abs(runs["torch"][k] - runs["torch-flip"][k]) for k in runs["torch"]) > 1e-3
    uncalibrated = aperture_zoo.predict_proba(model, [image], temperature=1.0)[0]
    calibrated = aperture_zoo.predict_proba(model, [image])[0]
    assert abs(float(uncalibrated.max()) - float(calibrated.max())) > 1e-3
    assert max(abs(float(c) - runs["torch"][k]) for c, k in zip(calibrated, model.spec.label_names)) < 1e-6


def test_the_card_of_weights_without_a_calibrator_never_claims_the_one_eval_fitted(synthetic_cifar: Path,
                                                                                   tmp_path: Path) -> None:
    """Hostile try 8, F2: after `aperture eval` (which fits a calibrator on the test set when the weights carry none) the
    card said predict applies "the weights' calibrator: here spline" with its ECE; the weights carry none and predict
    gives plain softmax. The card says so, and shows eval's calibrator as a measured alternative."""
    from aperture_zoo.weights import save_weights

    torch.manual_seed(0)
    weights = save_weights(create_model("resnet10", **SMALL), tmp_path / "w" / "model.safetensors",
                           {"test_top1": 10.0, "test_loss": 2.3, "epochs": 1})
    ran = CliRunner().invoke(app, ["eval", "resnet10", "--weights", str(weights), "--data-dir", str(synthetic_cifar),
                                   "--no-download", "--subset", "100"])
    assert ran.exit_code == 0, ran.output
    kind = json.loads((tmp_path / "w" / "eval.json").read_text())["calibrator"]["kind"]
    made = CliRunner().invoke(app, ["card", "resnet10", "--run", str(tmp_path / "w"), "--out", str(tmp_path / "card")])
    assert made.exit_code == 0, made.output
    readme = (tmp_path / "card" / "README.md").read_text()
    assert "apply the weights' calibrator" not in readme and "**calibrator** (" not in readme
    assert (f"these weights carry no calibrator, so `aperture_zoo.predict_proba(model, x)`, `aperture predict` and the "
            f"ONNX file's `probabilities` output give softmax(logits), uncalibrated: the table's first row. `aperture "
            f"eval` fitted a **{kind}** calibrator") in readme
    assert "| **softmax(logits)**: what these weights give |" in readme and "calibrator fitted by eval, not in" in readme
    assert "--write-temperature FILE" in readme


def _separable(n: int = 60, classes: int = 3, wrong: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    labels = np.arange(n) % classes
    logits = rng.normal(0, 1, (n, classes))
    logits[np.arange(n), labels] += 4.0  # every image right, with margins of a few logits
    for i in range(wrong):
        logits[i, labels[i]] -= 12.0
    return logits, labels


def test_a_split_the_model_gets_all_right_yields_no_calibrator() -> None:
    """Regression (tenth hostile try, X2): a fine-tune with a 100 %-right validation split shipped temperature 0.026
    as "calibrated" (cat 100.0 %), worsening the test NLL from 0.21 to 1.93."""
    from aperture_zoo.calibration import unfit_reason
    from aperture_zoo.train.calibrate import fit_val_calibration, logit_figures

    logits, labels = _separable()
    assert "gets all 60 images right" in unfit_reason(logits, labels)
    run = fit_val_calibration(logits, logits, labels)  # the mirrored logits: the same here
    assert set(run) == {"calibration_not_fitted"} and "all 60 images right" in run["calibration_not_fitted"]
    assert fit_temperature(logits, labels) < 0.1  # what a fit there would have shipped: near its lower bound
    figures = logit_figures(logits, None, labels, torch.nn.Identity())
    assert "calibrator" not in figures and figures["calibrator_fitted_on"].startswith("not fitted: the model gets all")
    one_wrong, labels = _separable(wrong=1)  # one wrong answer bounds T away from 0
    assert unfit_reason(one_wrong, labels) is None
    fitted = fit_val_calibration(one_wrong, one_wrong, labels)
    assert fitted["temperature"] > 0.3 and fitted["calibrator"]["kind"]
