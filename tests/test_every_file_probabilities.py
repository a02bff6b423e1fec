"""Every file `export` writes gives probabilities `predict --onnx` accepts: they sum to 1 and are
softmax(logits / T) of the file's own logits (int8 included: only its backbone is quantised)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from typer.testing import CliRunner

from aperture_zoo.calibration import softmax
from aperture_zoo.cli import app
from aperture_zoo.export.pipeline import export_model
from aperture_zoo.export.predict import OnnxClassifier
from aperture_zoo.model import create_model
from aperture_zoo.samples import sample_images

TEMPERATURE = 1.7


@pytest.fixture(scope="module")
def exported(synthetic_cifar: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    torch.manual_seed(0)
    model = create_model("resnet10", channels=(8, 16, 16, 32)).eval()
    out = tmp_path_factory.mktemp("every-file")
    kw = dict(provider="cpu", run_validation=False, temperature=TEMPERATURE)
    files = export_model(model, out, fp16=True, int8=True, data_dir=synthetic_cifar, calibration_images=64, **kw).files
    files += export_model(model, out, tta=True, **kw).files
    assert [p.name for p in files] == ["resnet10.onnx", "resnet10.fp16.onnx", "resnet10.int8.onnx", "resnet10.tta.onnx"]
    return files


def _check(probs: np.ndarray, logits: np.ndarray) -> None:
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    np.testing.assert_allclose(probs, softmax(logits.astype(np.float64), TEMPERATURE), atol=1e-4, rtol=0)


@pytest.mark.parametrize("index", range(4), ids=["fp32", "fp16", "int8", "tta"])
def test_probabilities_are_softmax_of_the_files_logits_in_the_library_and_the_cli(exported: list[Path], index: int) -> None:
    path = exported[index]
    clf = OnnxClassifier(path, provider="cpu")
    assert clf.temperature == pytest.approx(TEMPERATURE)
    pixels = np.random.default_rng(index).random((16, 3, 32, 32), dtype=np.float32)
    _check(clf.predict_proba(pixels), clf.logits(pixels))

    images = [str(p) for p, _ in sample_images()[:4]]
    result = CliRunner().invoke(app, ["predict", *images, "--onnx", str(path), "--top-k", "10", "--json",
                                      "--provider", "cpu"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout[result.stdout.index("["):])
    from aperture_zoo.images import load_images

    decoded, failed = load_images(images, clf.image_size)
    assert not failed
    logits = clf.logits(np.stack([img for _, img, _ in decoded]))
    for row, row_logits in zip(rows, logits):
        got = {t["label"]: t["probability"] for t in row["top"]}
        _check(np.asarray([[got[c] for c in clf.labels]]), row_logits[None])


def test_int8_quantises_the_backbone_only(exported: list[Path]) -> None:
    graph = onnx.load(str(exported[2])).graph
    ops = [n.op_type for n in graph.node]
    assert "QuantizeLinear" in ops and "Softmax" in ops  # quantised, and the Softmax is still there
    made_by = {o: n for n in graph.node for o in n.output}
    softmax_node = next(n for n in graph.node if n.op_type == "Softmax")
    upstream = [softmax_node]
    while upstream and upstream[-1].input and upstream[-1].input[0] in made_by and made_by[upstream[-1].input[0]].name:
        node = made_by[upstream[-1].input[0]]
        upstream.append(node)
        if "logits" in node.output:
            break
    between = [n.op_type for n in upstream[1:]]  # from the Softmax back to the node giving `logits`
    assert "QuantizeLinear" not in between[:-1] and "DequantizeLinear" not in between[:-1], between


def test_int8_of_a_model_with_an_adaptive_calibrator(synthetic_cifar: Path, tmp_path: Path) -> None:
    """The published kind (adaptive-spline) in an int8 file: onnxruntime's shape inference cannot type its
    nodes, so pre-processing the whole graph crashed `export --int8` of every published model; only the
    backbone is pre-processed and quantised, and the file's probabilities are its calibrator of its logits."""
    from aperture_zoo.catalog import get_weights

    torch.manual_seed(0)
    model = create_model("resnet10", channels=(8, 16, 16, 32)).eval()
    model.calibrator = get_weights("resnet22").calibrator
    assert model.calibrator.kind == "adaptive-spline"
    files = export_model(model, tmp_path, int8=True, data_dir=synthetic_cifar, calibration_images=64,
                         provider="cpu", run_validation=False).files
    clf = OnnxClassifier(files[-1], provider="cpu")
    assert files[-1].name == "resnet10.int8.onnx" and clf.calibrated
    pixels = np.random.default_rng(0).random((16, 3, 32, 32), dtype=np.float32)
    logits = clf.logits(pixels).astype(np.float64)
    np.testing.assert_allclose(clf.predict_proba(pixels), model.calibrator.apply(logits), atol=1e-4, rtol=0)
