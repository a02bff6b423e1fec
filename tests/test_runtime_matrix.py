"""The runtime matrix on the published resnet22: its files run right in every runtime they do not
declare themselves unfit for (old and current onnxruntime, OpenCV DNN 4.x and 5.x).

Marked ``runtimes``: it builds a venv per runtime under a cache folder (minutes the first time, a
package index needed), so it runs with ``pytest -m runtimes`` (.ci/run does), not in the default suite.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from aperture_zoo.export.matrix import DEFAULT_RUNTIMES, RuntimeSpec, matrix_images, run_matrix, runtime_python, run_worker

pytestmark = pytest.mark.runtimes


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """resnet22's published weights exported as `aperture export --fp16 [--int8]` writes them; int8
    only with real CIFAR-10 (its ranges are calibrated on training images)."""
    import aperture_zoo
    from aperture_zoo.export.onnx_export import read_metadata
    from aperture_zoo.export.pipeline import export_model

    data = os.environ.get("APERTURE_CIFAR10_DIR")
    out = tmp_path_factory.mktemp("matrix")
    result = export_model(aperture_zoo.load("resnet22", pretrained=True), out, fp16=True, int8=data is not None,
                          data_dir=data, run_validation=False)
    return {read_metadata(p)["precision"]: p for p in result.files}


def test_every_file_runs_right_wherever_it_does_not_say_otherwise(files: dict[str, Path]) -> None:
    import aperture_zoo
    import torch

    from aperture_zoo.export.onnx_export import NormalizedClassifier
    from aperture_zoo.export.validate import _torch_logits

    data = os.environ.get("APERTURE_CIFAR10_DIR")
    pixels, labels, described = matrix_images(data, 500)
    with torch.no_grad():
        reference = _torch_logits(NormalizedClassifier(aperture_zoo.load("resnet22", pretrained=True)).eval(), pixels, "cpu")
    matrix = run_matrix(files, pixels, reference, labels=labels, images=described)
    table = json.dumps(matrix.to_dict(), indent=1)
    ran = [c for c in matrix.cells if c.agreement is not None]
    skipped = [c for c in matrix.cells if c.note.startswith("skipped")]
    # Only a package index that cannot provide a runtime, or a missing GPU, leaves a cell unrun.
    assert all(c.note.startswith("skipped: the package index") or c.note == "no CUDA GPU here"
               for c in matrix.cells if c.agreement is None and c.passed is None and c.declared_valid), table
    assert {c.runtime for c in ran} >= {"ort"}, table
    for c in matrix.cells:
        if c.declared_valid and c.agreement is not None:
            assert c.passed, f"{c.precision} in {c.runtime} {c.version}: {c.note}\n{table}"
            if c.precision in ("fp32", "fp16"):
                # fp16 may flip a near-tie: its tolerance is 99.5 % (validate.tolerance_for), which passed says
                assert c.agreement == 100.0 if c.precision == "fp32" else c.agreement >= 99.5, table
                assert c.max_abs_diff <= (1e-4 if c.precision == "fp32" else 5e-2), table
            else:
                assert c.agreement >= 99.0, table
        assert c.passed is not False, table  # a declared-valid file never fails to load either
    if "int8" in files:  # the int8 file declares OpenCV DNN invalid: the declaration must be earned
        opencv = [c for c in matrix.cells if c.precision == "int8" and c.runtime.startswith("opencv") and c.version]
        assert all(not c.declared_valid for c in opencv), table
    print(f"\n{described}; {len(skipped)} cells skipped")


def test_worker_reports_a_file_the_runtime_cannot_load(tmp_path: Path) -> None:
    python, why = runtime_python(DEFAULT_RUNTIMES[0])
    assert python is not None, why
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((1, 3, 32, 32), np.float32))
    logits, info = run_worker(python, DEFAULT_RUNTIMES[0], bad, x)
    assert logits is None and info["error"]


def test_a_runtime_the_index_cannot_provide_is_skipped_with_the_reason(tmp_path: Path) -> None:
    spec = RuntimeSpec("nope", "onnxruntime", ("onnxruntime==0.0.0",))
    python, why = runtime_python(spec, tmp_path)
    assert python is None and why.startswith("the package index could not provide onnxruntime==0.0.0 for Python 3.")
