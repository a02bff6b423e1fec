"""The calibrator family: the optimiser finds known optima, every kind keeps the prediction, the
records are checked parsers, and the kind is chosen by held-out NLL (never on the scored images)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aperture_zoo.calibration import (
    MIN_HALF,
    choose_calibrator,
    cross_fit,
    fit_calibrator,
    fit_temperature,
    prob_scores,
    softmax,
    stratified_halves,
)
from aperture_zoo.calibrator_fit import fit_kind, newton
from aperture_zoo.calibrators import KINDS, MAX_LOGIT, Calibrator, CalibratorError, from_metadata

SAMPLE = [
    Calibrator("temperature", 0.7),
    Calibrator("power", 1.3, 1.6),
    Calibrator("spline", 1.0, knots=(1.0, 3.0, 4.2), slopes=(0.8, 1.5, 6.0, 0.5)),
    Calibrator("adaptive", 0.8, weights=(("log_margin", 0.2), ("entropy", -0.4))),
    Calibrator("adaptive-power", 1.4, 1.5, weights=(("log_margin", 0.05), ("entropy", -0.2))),
    Calibrator("adaptive-spline", 1.2, knots=(2.0, 4.0), slopes=(0.7, 2.0, 0.001), weights=(("entropy", -0.5),)),
]


def _draw_labels(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return (probs.cumsum(1) > rng.random((len(probs), 1))).argmax(1)


# -- the optimiser ---------------------------------------------------------------------------------
def test_newton_finds_the_minimum_of_rosenbrock_and_of_a_quadratic() -> None:
    def rosen(x: np.ndarray) -> tuple[float, np.ndarray]:
        a, b = x
        return (1 - a) ** 2 + 100 * (b - a * a) ** 2, np.array([-2 * (1 - a) - 400 * a * (b - a * a), 200 * (b - a * a)])

    np.testing.assert_allclose(newton(rosen, [-1.2, 1.0]), [1.0, 1.0], atol=1e-6)
    h, c = np.array([[3.0, 1.0], [1.0, 2.0]]), np.array([1.0, -2.0])
    quad = lambda x: (0.5 * x @ h @ x - c @ x, h @ x - c)  # noqa: E731
    np.testing.assert_allclose(newton(quad, [10.0, 10.0]), np.linalg.solve(h, c), atol=1e-9)


def test_the_temperature_kind_matches_the_golden_section_fit() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3000, 10)) * 3
    labels = _draw_labels(softmax(logits, 0.6), rng)
    assert fit_kind("temperature", logits, labels).temperature == pytest.approx(fit_temperature(logits, labels), rel=1e-4)


@pytest.mark.parametrize("truth", [SAMPLE[1], SAMPLE[3], SAMPLE[4]], ids=lambda c: c.kind)
def test_fitting_recovers_the_calibrator_the_labels_were_drawn_from(truth: Calibrator) -> None:
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(12000, 10)) * rng.uniform(0.5, 4.0, size=(12000, 1))
    labels = _draw_labels(truth.apply(logits), rng)
    got = fit_kind(truth.kind, logits, labels)
    # the minimiser: no worse than the truth on the images it was fitted on, and the same map
    assert prob_scores(got.apply(logits), labels)["nll"] <= prob_scores(truth.apply(logits), labels)["nll"]
    assert np.abs(got.apply(logits) - truth.apply(logits)).mean() < 2e-3
    if truth.kind != "adaptive-power":  # there T and the weights trade off: only the map is identified
        assert got.temperature == pytest.approx(truth.temperature, rel=0.05)
        assert got.power == pytest.approx(truth.power, rel=0.05)
        for (name, w), (name2, w2) in zip(got.weights, truth.weights):
            assert name == name2 and w == pytest.approx(w2, abs=0.05)


def test_a_spline_fit_recovers_a_bent_gap_map() -> None:
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(6000, 10)) * 2.5
    truth = Calibrator("power", 1.0, 1.8)
    labels = _draw_labels(truth.apply(logits), rng)
    spline = fit_kind("spline", logits, labels)
    d = np.linspace(0.2, 4.0, 20)
    bends = np.diff(spline.gaps(d)) / np.diff(d)
    assert bends[-1] > 2 * bends[0]  # the fitted slopes grow, as d ** 1.8 does
    nll = lambda c: prob_scores(c.apply(logits), labels)["nll"]  # noqa: E731
    assert nll(spline) < nll(fit_kind("temperature", logits, labels)) - 0.01


# -- every calibrator keeps the prediction ---------------------------------------------------------
_values = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.floats(-50, 50, allow_nan=False, width=32),
    st.sampled_from([0.0, -0.0, 1e-45, -1e-45, 1e-30, 3.0, 3.0000002, MAX_LOGIT, -MAX_LOGIT]),
)
_logits = st.integers(2, 12).flatmap(lambda k: st.lists(st.lists(_values, min_size=k, max_size=k), min_size=1, max_size=4))


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=_logits, which=st.integers(0, len(SAMPLE) - 1))
def test_apply_keeps_the_order_of_any_finite_logits(rows: list[list[float]], which: int) -> None:
    z = np.asarray(rows, dtype=np.float64)
    p = SAMPLE[which].apply(z)
    assert np.isfinite(p).all() and (p >= 0).all()
    np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-12)
    for zi, pi in zip(z, p):
        assert pi[zi.argmax()] == pi.max()  # the predicted class keeps the top probability
        order = np.argsort(zi, kind="stable")
        assert (np.diff(pi[order]) >= 0).all()  # a higher logit never gets a lower probability
        for a, b in zip(order, order[1:]):
            if zi[a] == zi[b]:
                assert pi[a] == pi[b]  # ties stay ties
        top2 = np.sort(pi)[-2:]
        if top2[1] > top2[0]:
            assert pi.argmax() == zi.argmax()  # whenever the probabilities tell them apart


@pytest.mark.parametrize("bad", [[[1.0, float("nan")]], [[float("inf"), 0.0]], [[-float("inf"), 0.0]],
                                 [[1e39, 0.0]], [[1.0]], [[[1.0, 2.0]]]])
def test_non_finite_or_impossible_logits_are_refused(bad: list) -> None:
    for cal in SAMPLE:
        with pytest.raises(CalibratorError):
            cal.apply(np.asarray(bad))


def test_the_temperature_kind_is_softmax_of_logits_over_t() -> None:
    z = np.random.default_rng(3).normal(size=(50, 10)) * 4
    np.testing.assert_allclose(Calibrator("temperature", 0.7).apply(z), softmax(z, 0.7), rtol=1e-12, atol=1e-15)


# -- records ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("cal", SAMPLE, ids=lambda c: c.kind)
def test_records_round_trip_through_json(cal: Calibrator) -> None:
    back = Calibrator.from_dict(json.loads(json.dumps(cal.to_dict())))
    assert back == cal and back.describe() == cal.describe()


@pytest.mark.parametrize("record, message", [
    ({"kind": "isotonic"}, "unknown calibrator kind"),
    ({"kind": "temperature", "temperature": 0}, "above 0"),
    ({"kind": "temperature", "temperature": 1e9}, "outside"),
    ({"kind": "temperature", "power": 2.0}, "power"),
    ({"kind": "power", "power": 9.0}, "power"),
    ({"kind": "adaptive"}, "feature weights"),
    ({"kind": "adaptive", "weights": {"pixels": 1.0}}, "feature weights"),
    ({"kind": "spline", "knots": [2.0, 1.0], "slopes": [1, 1, 1]}, "ascending"),
    ({"kind": "spline", "knots": [1.0], "slopes": [1.0, 0.0]}, "slope"),
    ({"kind": "temperature", "extra": 1}, "not a calibrator record"),
    ({"kind": "temperature", "temperature": True}, "number"),
    ("temperature 0.7", "not a calibrator record"),
])
def test_malformed_records_are_one_line_errors(record: object, message: str) -> None:
    with pytest.raises(CalibratorError, match=message):
        Calibrator.from_dict(record, "the calibrator in x")


@pytest.mark.parametrize("make, message", [
    (lambda: from_metadata({"calibrator": '{"kind": "temperature",'}, "w.safetensors"),
     "the calibrator in w.safetensors is not JSON; re-export or re-fit it"),
    (lambda: Calibrator("spline", 1.0, knots=(1.0,), slopes=(1.0, "steep")),
     "a slope of the 'spline' calibrator must be a number, got 'steep'; re-fit it"),
    (lambda: Calibrator("spline", 1.0, knots=("far",), slopes=(1.0, 2.0)),
     "a knot of the 'spline' calibrator must be a number, got 'far'; re-fit it"),
    (lambda: Calibrator.from_dict([1], "the calibrator in x"),
     "the calibrator in x is not a calibrator record (kind, temperature, power, weights, knots, slopes, fitted_on, "
     "classes): '[1]'; re-export or re-fit it"),
], ids=["not-json", "slope", "knot", "not-a-record"])
def test_a_bad_record_is_refused_naming_where_what_and_the_fix(make, message: str) -> None:
    with pytest.raises(CalibratorError) as info:
        make()
    assert str(info.value) == message


_json = st.recursive(st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=8),
                     lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                     max_leaves=12)
_record = st.fixed_dictionaries({}, optional={k: _json for k in ("kind", "temperature", "power", "weights", "knots",
                                                                  "slopes", "fitted_on")})


@settings(max_examples=150, deadline=None, database=None)
@given(record=st.one_of(_json, _record, _record.map(lambda r: {**r, "kind": "spline"})), text=st.text(max_size=30),
       as_text=st.booleans())
def test_any_metadata_is_a_valid_calibrator_or_a_calibrator_error(record: object, text: str, as_text: bool) -> None:
    """What a file's metadata holds (JSON text in ONNX and safetensors headers) is outside bytes."""
    for meta in ({"calibrator": json.dumps(record) if as_text else record}, {"calibrator": text}, {"temperature": text}):
        try:
            cal = from_metadata(meta, "x")
        except CalibratorError:
            continue
        p = cal.apply(np.array([[1.0, 0.5, -2.0]]))
        assert np.isfinite(p).all() and p.argmax() == 0


# -- choosing the kind -----------------------------------------------------------------------------
def test_the_kind_is_chosen_by_held_out_nll_and_fitted_on_all_images() -> None:
    rng = np.random.default_rng(4)
    logits = rng.normal(size=(2000, 10)) * rng.uniform(0.5, 4.0, size=(2000, 1))
    labels = _draw_labels(SAMPLE[1].apply(logits), rng)  # drawn from a power calibrator
    cal, held = choose_calibrator(logits, labels, "test")
    assert set(held) == set(KINDS) and cal.kind == min(held, key=held.__getitem__)
    assert held[cal.kind] < held["temperature"] and cal.fitted_on == "test"
    assert cal == fit_kind(cal.kind, logits, labels, "test")
    assert fit_calibrator(logits, labels, "test") == cal


def test_too_few_images_to_compare_kinds_give_one_temperature() -> None:
    rng = np.random.default_rng(5)
    labels = np.repeat(np.arange(4), 9)  # halves of 18 < MIN_HALF
    logits = rng.normal(size=(len(labels), 4)) + 2 * np.eye(4)[labels]
    assert min(map(len, stratified_halves(labels))) < MIN_HALF
    cal, held = choose_calibrator(logits, labels)
    assert held == {} and cal.kind == "temperature"
    with pytest.raises(CalibratorError, match="labelled logits"):
        fit_calibrator(np.zeros((0, 4)), np.zeros(0, int))


def test_cross_fit_scores_each_half_with_what_was_fitted_on_the_other() -> None:
    rng = np.random.default_rng(6)
    labels = np.repeat(np.arange(10), 60)
    a, b = stratified_halves(labels)
    logits = rng.normal(size=(len(labels), 10)) + 2.5 * np.eye(10)[labels]
    logits[a] *= 3.0  # the halves want very different calibrators
    out = cross_fit(logits, labels, kinds=("temperature", "power"), others={"flip": (logits[:, ::-1] * 0.5, None)})
    fitted = [Calibrator.from_dict(h["calibrator"]) for h in out["calibrator"]["halves"]]
    assert fitted[0] == choose_calibrator(logits[a], labels[a], kinds=("temperature", "power"))[0]
    want = np.mean([prob_scores(fitted[0].apply(logits[b]), labels[b])["ece"],
                    prob_scores(fitted[1].apply(logits[a]), labels[a])["ece"]])
    assert out["calibrator"]["ece"] == pytest.approx(want)
    own = np.mean([prob_scores(fitted[0].apply(logits[a]), labels[a])["ece"],
                   prob_scores(fitted[1].apply(logits[b]), labels[b])["ece"]])
    assert out["calibrator"]["ece"] != pytest.approx(own)
    t = out["temperature"]["halves"]
    assert t[0] == pytest.approx(fit_temperature(logits[a], labels[a]))
    flip = logits[:, ::-1] * 0.5
    assert out["others"]["flip"]["calibrator"]["nll"] == pytest.approx(np.mean(
        [prob_scores(fitted[0].apply(flip[b]), labels[b])["nll"], prob_scores(fitted[1].apply(flip[a]), labels[a])["nll"]]))
    assert math.isfinite(out["raw"]["classwise_ece"])


# -- the ONNX graph computes the same map --------------------------------------------------------
def test_the_onnx_probabilities_are_the_numpy_calibrator_in_fp32_and_fp16_files(tmp_path) -> None:
    """The calibrator nodes after the logits equal Calibrator.apply within 1e-4 (they stay float32
    in the fp16 file), validation checks it, and a file whose metadata names another calibrator
    than its graph computes fails."""
    import onnx
    import torch

    from aperture_zoo.export.onnx_export import read_metadata, set_metadata, to_onnx
    from aperture_zoo.export.predict import OnnxClassifier
    from aperture_zoo.export.quantize import to_fp16
    from aperture_zoo.export.validate import validate
    from aperture_zoo.model import create_model

    torch.manual_seed(0)
    model = create_model("resnet10", channels=(8, 16, 16, 32)).eval()
    with torch.no_grad():
        model.fc.weight.normal_(0, 0.5)
    model.calibrator = SAMPLE[5]  # adaptive-spline: every op the family uses but Pow
    pixels = np.random.default_rng(0).integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    path = to_onnx(model, tmp_path / "m.onnx", exporter="legacy")
    assert Calibrator.from_dict(json.loads(read_metadata(path)["calibrator"])) == SAMPLE[5]
    for file in (path, to_fp16(path, tmp_path / "m.fp16.onnx")):
        clf = OnnxClassifier(file, provider="cpu")
        assert clf.calibrated and "adaptive-spline" in clf.describe()
        np.testing.assert_allclose(clf.predict_proba(pixels), SAMPLE[5].apply(clf.logits(pixels)), atol=1e-4)
    report = validate(path, model, provider="cpu", batch_sizes=(3,))
    assert report.passed and report.comparisons[-1].max_calibrator_diff < 1e-6
    power = to_onnx(model, tmp_path / "p.onnx", exporter="legacy", calibrator=SAMPLE[4])  # Pow
    clf = OnnxClassifier(power, provider="cpu")
    np.testing.assert_allclose(clf.predict_proba(pixels), SAMPLE[4].apply(clf.logits(pixels)), atol=1e-4)
    proto = onnx.load(str(path))  # the metadata says one calibrator, the graph computes another
    set_metadata(proto, {"calibrator": json.dumps(SAMPLE[2].to_dict())})
    onnx.save(proto, str(tmp_path / "lying.onnx"))
    report = validate(tmp_path / "lying.onnx", model, provider="cpu", batch_sizes=(3,))
    assert not report.passed and any("differs from the calibrator" in f for f in report.failures)


def test_a_weights_file_with_only_a_temperature_falls_back_to_it_and_says_so_once(tmp_path) -> None:
    import warnings

    import torch

    import aperture_zoo
    from aperture_zoo.model import create_model
    from aperture_zoo.predict import CalibrationNotice
    from aperture_zoo.weights import save_weights

    torch.manual_seed(0)
    model = create_model("resnet10", channels=(8, 16, 16, 32)).eval()
    old = save_weights(model, tmp_path / "old.safetensors", {"temperature": 0.8, "temperature_fitted_on": "validation split"})
    new = save_weights(model, tmp_path / "new.safetensors", {"temperature": 0.8, "calibrator": SAMPLE[1].to_dict()})
    x = torch.randn(2, 3, 32, 32)
    loaded = aperture_zoo.load_weights(create_model("resnet10", channels=(8, 16, 16, 32)).eval(), old)
    assert loaded.calibrator == Calibrator("temperature", 0.8, fitted_on="validation split")
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        first = aperture_zoo.predict_proba(loaded, x)
        aperture_zoo.predict_proba(loaded, x)
    assert [type(w.message) for w in said] == [CalibrationNotice] and "only a temperature" in str(said[0].message)
    with torch.no_grad():
        torch.testing.assert_close(first, (loaded(x) / 0.8).softmax(-1))
    current = aperture_zoo.load_weights(create_model("resnet10", channels=(8, 16, 16, 32)).eval(), new)
    assert current.calibrator == SAMPLE[1] and current.calibration_notice is None
    with torch.no_grad():
        want = torch.from_numpy(SAMPLE[1].apply(current(x).numpy())).float()
    torch.testing.assert_close(aperture_zoo.predict_proba(current, x), want)
    bad = save_weights(model, tmp_path / "bad.safetensors", {"calibrator": {"kind": "spline", "knots": [1.0]}})
    with pytest.raises(CalibratorError, match="the calibrator in .*bad.safetensors"):
        aperture_zoo.load_weights(create_model("resnet10", channels=(8, 16, 16, 32)), bad)
