"""The runtime matrix's rows for the other formats: each file run in the runtime it is made for.

``openvino-ir`` runs the OpenVINO IRs (fp32, bf16, int8) and ``litert`` the ``.tflite`` files, each in a
virtual environment of its own under the runtimes cache folder holding only numpy and that runtime (as
the old onnxruntime and OpenCV DNN rows); ``executorch`` runs the ``.pte`` files in the ExecuTorch
installed here (its runtime takes torch tensors, so a venv of its own would hold a second torch).
``runtime_worker.py`` runs every cell; its logits are judged by the precision's tolerance
(``validate.tolerance_for``), exactly as the ONNX cells are. Core ML files do not run on this system
and have no row. Each file is first shown to be of the weights of the reference
(``provenance.check_model``: its validation report names its exact bytes), and each cell records the
SHA-256 of the model it ran (``files.model_sha256``), which ``provenance.check_runtimes`` checks.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from .formats import FORMATS, file_name
from .matrix import Cell, RuntimeSpec, run_worker, runtime_python

FORMAT_RUNTIMES: tuple[RuntimeSpec, ...] = (
    RuntimeSpec("openvino-ir", "openvino", ("openvino==2026.4.1",), why="the OpenVINO IR files (fp32, bf16, int8)"),
    RuntimeSpec("executorch", "executorch", (), why="the ExecuTorch programs, XNNPACK (the ExecuTorch installed here)"),
    RuntimeSpec("litert", "litert", ("ai-edge-litert==2.3.0", "numpy"), why="the LiteRT flatbuffers (fp32, int8)"),
)
FORMAT_OF_ROW = {"openvino-ir": "openvino", "executorch": "executorch", "litert": "tflite"}


def format_files_in(folder: Path, stem: str) -> dict[str, dict[str, Path]]:
    """The other formats' files of ``stem`` in ``folder`` (as ``aperture export --format`` names them)."""
    found: dict[str, dict[str, Path]] = {}
    for row, fmt in FORMAT_OF_ROW.items():
        for precision in FORMATS[fmt].precisions:
            path = folder / file_name(stem, fmt, precision)
            if path.is_file():
                found.setdefault(row, {})[precision] = path
    return found


def check_format_files(files: dict[str, dict[str, Path]], weights_sha256: str, name: str = "NAME") -> None:
    """Every file of ``files`` made from the weights ``weights_sha256``, or ``provenance.StaleFileError``
    (a file of other weights would be judged against the wrong reference)."""
    from aperture_zoo.provenance import check_model

    for by_precision in files.values():
        for path in by_precision.values():
            check_model(path, weights_sha256, name)


def run_format_rows(
    files: dict[str, dict[str, Path]],
    pixels: np.ndarray,
    reference: np.ndarray,
    *,
    labels: np.ndarray | None = None,
    rows: Sequence[RuntimeSpec] = FORMAT_RUNTIMES,
    cache_dir: Path | None = None,
    images: str = "",
    batch: int = 100,
    progress: Callable[[str], None] | None = None,
) -> list[Cell]:
    """A cell per file of ``files`` (row key -> precision -> path) in its row's runtime (check them
    first: ``check_format_files``)."""
    from aperture_zoo.files import model_sha256

    from .validate import _judge, compare, tolerance_for

    say = progress or (lambda _m: None)
    cells: list[Cell] = []
    with tempfile.TemporaryDirectory(prefix="aperture_format_matrix_") as tmp:
        x = Path(tmp) / "pixels.npy"
        np.save(x, np.ascontiguousarray(pixels, dtype=np.float32))
        for spec in rows:
            if spec.key not in files:
                continue
            say(f"preparing {spec.key}" + (f" ({' '.join(spec.requirements)})" if spec.requirements else ""))
            python, why = runtime_python(spec, cache_dir)
            for precision, path in files[spec.key].items():
                cell = Cell(spec.key, precision, path.name, sha256=model_sha256(path))
                cells.append(cell)
                if python is None:
                    cell.note = f"skipped: {why}"
                    continue
                say(f"{spec.key}: {path.name}")
                logits, info = run_worker(python, spec, path, x, batch)
                cell.version, cell.provider = info.get("version"), info.get("provider")
                if logits is None:
                    cell.note, cell.passed = f"fails to load or run: {info['error']}", False
                    continue
                comp = compare(logits, reference, images or "test images", labels)
                cell.images, cell.agreement, cell.max_abs_diff = comp.num_images, comp.agreement, comp.max_abs_diff
                failures = _judge(comp, tolerance_for(precision, "cpu"), f"{precision}/{spec.key}")
                cell.passed, cell.note = not failures, "; ".join(failures)
    return cells
