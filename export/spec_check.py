"""The validation report of a file that cannot run here (Core ML off Apple systems): a spec-level check.

It is a ``ValidationReport`` like any other (same JSON, same renaming of a failed file, the same two
hashes: the exact package judged and the weights), with no comparisons, ``ran=False`` and the provider
saying why: a card or a reader can never take it for a file that was run against PyTorch.
"""

from __future__ import annotations

import os
from pathlib import Path

from aperture_zoo.files import model_sha256
from aperture_zoo.model import ResNet
from aperture_zoo.provenance import other_weights

from .reports import Tolerance, ValidationReport

NOT_RUN = "not run: Core ML runs on Apple systems only; checked at the spec level (inputs, outputs, metadata, weights round trip)"


def spec_report(path: str | os.PathLike[str], model: ResNet, weights_sha256: str | None = None) -> ValidationReport:
    """``weights_sha256``: of the weights ``model`` came from (default: of its state dict); a package that
    records other weights fails, as ``validate`` fails any file of other weights."""
    from .coreml_export import check_coreml, read_coreml_metadata
    from .onnx_export import state_dict_sha256

    judged = model_sha256(path)
    meta = read_coreml_metadata(path)
    precision = meta.get("precision", "fp32")
    report = ValidationReport(onnx_file=str(path), arch=meta.get("arch", model.spec.name), precision=precision,
                              provider=NOT_RUN, tolerance=Tolerance(), ran=False, onnx_sha256=judged,
                              weights_sha256=weights_sha256 or state_dict_sha256(model))
    stale = other_weights(path, meta, report.weights_sha256, weights_sha256 is not None)  # as validate's
    report.failures += [stale] if stale else []
    report.failures += [f"{precision}/coreml spec: {f}" for f in check_coreml(path, model, precision)]
    if model_sha256(path) != judged:
        report.failures.append(f"{Path(path).name} changed while it was checked (another writer?); export it again")
    return report
