"""The validation report of a file that cannot run here (Core ML off Apple systems): a spec-level check.

It is a ``ValidationReport`` like any other (same JSON, same renaming of a failed file), with no
comparisons, ``ran=False`` and the provider saying why: a card or a reader can never take it for a file
that was run against PyTorch.
"""

from __future__ import annotations

import os

from aperture_zoo.model import ResNet

from .validate import Tolerance, ValidationReport

NOT_RUN = "not run: Core ML runs on Apple systems only; checked at the spec level (inputs, outputs, metadata, weights round trip)"


def spec_report(path: str | os.PathLike[str], model: ResNet) -> ValidationReport:
    from .coreml_export import check_coreml, read_coreml_metadata

    meta = read_coreml_metadata(path)
    precision = meta.get("precision", "fp32")
    report = ValidationReport(onnx_file=str(path), arch=meta.get("arch", model.spec.name), precision=precision,
                              provider=NOT_RUN, tolerance=Tolerance(), ran=False)
    report.failures += [f"{precision}/coreml spec: {f}" for f in check_coreml(path, model, precision)]
    return report
