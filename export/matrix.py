"""The runtime matrix: each exported file run in the runtimes apps use, against PyTorch.

Apps run our files in the onnxruntime they pinned years ago as often as in today's, or in OpenCV
DNN. Each cell runs one file (fp32, fp16, int8) in one runtime on the same test images and records
top-1 agreement with the fp32 PyTorch model and the max |Δlogit|, judged by the file's precision
tolerance (``validate.tolerance_for``). A runtime other than the installed onnxruntime lives in a
throw-away virtual environment under a cache folder (made once, reused), holding only numpy and that
runtime: ``runtime_worker.py`` runs there and exchanges ``.npy`` files, so nothing of aperture_zoo
or its dependencies leaks into what is measured, and no old runtime enters the product's dependencies.

A file that declares a runtime in its ``not_validated_for`` metadata (the int8 file, for OpenCV
DNN) has that cell reported, not judged: the declaration is what tells apps not to use it there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .cache import default_cache_dir
from .errors import ExportError
from .onnx_export import read_metadata, save_checked, set_metadata

WORKER = Path(__file__).with_name("runtime_worker.py")
WORKER_BATCH = 100  # apps batch their images; OpenCV's int8 bug shows only above batch 1


@dataclass(frozen=True)
class RuntimeSpec:
    """One column of the matrix: a runtime, where it comes from, and the provider it runs on."""

    key: str                       # short name, e.g. "ort-1.16"
    runtime: str                   # the worker's runner: "onnxruntime" or "opencv-dnn"
    requirements: tuple[str, ...]  # pip requirements of its venv; () = the onnxruntime installed here
    provider: str = "cpu"
    why: str = ""                  # why this column is in the matrix


# The oldest onnxruntime on PyPI for Python 3.11 (1.15.0; 1.14 added opset 18 but has no 3.11
# wheels), the 1.16 line many deployed apps still pin, and OpenCV DNN's newest 4.x and 5.x.
# Releases before numpy 2 need numpy<2 beside them.
DEFAULT_RUNTIMES: tuple[RuntimeSpec, ...] = (
    RuntimeSpec("ort", "onnxruntime", (), why="the onnxruntime installed with aperture_zoo"),
    RuntimeSpec("ort-cuda", "onnxruntime", (), provider="cuda", why="the same, on its CUDA provider"),
    RuntimeSpec("ort-1.15", "onnxruntime", ("onnxruntime==1.15.0", "numpy<2"),
                why="the oldest onnxruntime with Python 3.11 wheels that runs opset 18"),
    RuntimeSpec("ort-1.16", "onnxruntime", ("onnxruntime==1.16.3", "numpy<2"), why="still pinned by many apps"),
    RuntimeSpec("opencv-4", "opencv-dnn", ("opencv-python-headless==4.14.0.94",), why="OpenCV DNN, newest 4.x"),
    RuntimeSpec("opencv-5", "opencv-dnn", ("opencv-python-headless==5.0.0.93",), why="OpenCV DNN, newest 5.x"),
    RuntimeSpec("openvino", "openvino", ("openvino==2026.4.1",), why="OpenVINO reads the ONNX files themselves"),
)


@dataclass
class Cell:
    """One file in one runtime."""

    runtime: str                    # the RuntimeSpec key
    precision: str
    file: str
    version: str | None = None      # the runtime's own version string, as it reports it
    provider: str | None = None
    images: int = 0
    agreement: float | None = None  # percent of top-1 equal to PyTorch's
    max_abs_diff: float | None = None
    passed: bool | None = None      # None: not run, or not judged (declared not validated there)
    declared_valid: bool = True     # False when the file's metadata says it is not for this runtime
    note: str = ""
    sha256: str | None = None       # of the file measured (readers check it: provenance.check_runtimes)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Matrix:
    cells: list[Cell] = field(default_factory=list)
    images: str = ""
    batch: int = WORKER_BATCH
    weights_sha256: str | None = None  # the weights of the PyTorch reference and of every file measured

    @property
    def passed(self) -> bool:
        """Every cell a file declares valid that ran agrees within its tolerance."""
        return all(c.passed is not False for c in self.cells)

    def to_dict(self) -> dict:
        return {"images": self.images, "batch": self.batch, "weights_sha256": self.weights_sha256,
                "cells": [c.to_dict() for c in self.cells]}


def runtime_python(spec: RuntimeSpec, cache_dir: Path | None = None) -> tuple[Path | None, str]:
    """The Python that has ``spec``'s runtime: this one for the installed onnxruntime, else a venv
    made once under ``cache_dir``. (None, reason) when the package index cannot provide it."""
    if not spec.requirements:
        return Path(sys.executable), ""
    from filelock import FileLock

    cache_dir = cache_dir or default_cache_dir()
    slug = "-".join(r.replace("==", "-").replace("<", "lt") for r in spec.requirements)
    venv = cache_dir / f"py{sys.version_info.major}{sys.version_info.minor}-{slug}"
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    ready = venv / ".aperture-ready"
    cache_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(venv) + ".lock"):
        if ready.is_file() and python.is_file():
            return python, ""
        steps = [[sys.executable, "-m", "venv", "--clear", str(venv)],
                 [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *spec.requirements]]
        for cmd in steps:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
            if done.returncode != 0:
                lines = [ln for ln in (done.stderr or done.stdout).splitlines() if ln.strip() and "WARNING" not in ln]
                return None, (f"the package index could not provide {' '.join(spec.requirements)} for Python "
                              f"{sys.version_info.major}.{sys.version_info.minor}: {lines[-1] if lines else done.returncode}")
        ready.write_text(" ".join(spec.requirements) + "\n")
    return python, ""


def run_worker(python: Path, spec: RuntimeSpec, model: Path, pixels: Path, batch: int = WORKER_BATCH,
               timeout: float = 600) -> tuple[np.ndarray | None, dict]:
    """Logits of ``model`` on ``pixels`` (a .npy file) in ``spec``'s runtime, and what it reported."""
    out = pixels.with_name(f"logits-{spec.key}-{model.stem}.npy")
    cmd = [str(python), str(WORKER), spec.runtime, str(model), str(pixels), str(out),
           "--provider", spec.provider, "--batch", str(batch)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    try:
        info = json.loads(lines[-1]) if lines else {}
    except json.JSONDecodeError:
        info = {}
    if done.returncode != 0 or "error" in info or not out.is_file():
        tail = (done.stderr.strip().splitlines() or [""])[-1]
        return None, {"error": info.get("error") or f"the worker exited {done.returncode}: {tail}"}
    return np.load(out), info


def _input_file(path: Path, pixels: np.ndarray, dest: Path) -> Path:
    """The pixels as ``path`` takes them (normalised here when its graph does not), saved as .npy."""
    meta = read_metadata(path)
    x = np.asarray(pixels, dtype=np.float32)
    if not json.loads(meta.get("normalize_in_graph", "true")):
        mean = np.asarray(json.loads(meta["mean"]), np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(json.loads(meta["std"]), np.float32).reshape(1, -1, 1, 1)
        x = (x - mean) / std
    np.save(dest, np.ascontiguousarray(x, dtype=np.float32))
    return dest


def _not_validated_for(path: Path) -> dict[str, str]:
    raw = read_metadata(path).get("not_validated_for")
    return json.loads(raw) if raw else {}


def _family(spec: RuntimeSpec) -> str:
    return spec.runtime  # "onnxruntime" or "opencv-dnn": what a file's not_validated_for names


def run_matrix(
    files: dict[str, Path],
    pixels: np.ndarray,
    reference: np.ndarray,
    *,
    labels: np.ndarray | None = None,
    runtimes: Sequence[RuntimeSpec] = DEFAULT_RUNTIMES,
    cache_dir: Path | None = None,
    images: str = "",
    batch: int = WORKER_BATCH,
    progress: Callable[[str], None] | None = None,
) -> Matrix:
    """Run each of ``files`` (precision -> path) in each runtime on ``pixels`` (float32 N x 3 x H x W
    in [0, 1]) and compare with ``reference`` (PyTorch's fp32 logits for the same images)."""
    from .runtime import cuda_driver_present, cuda_offered
    from .validate import _judge, compare, tolerance_for

    from aperture_zoo.files import file_sha256

    say = progress or (lambda _m: None)
    matrix = Matrix(images=images, batch=batch)
    hashes = {p: file_sha256(f) for p, f in files.items()}
    with tempfile.TemporaryDirectory(prefix="aperture_matrix_") as tmp:
        inputs = {p: _input_file(f, pixels, Path(tmp) / f"{p}.npy") for p, f in files.items()}
        for spec in runtimes:
            declared = {p: _family(spec) not in _not_validated_for(f) for p, f in files.items()}
            if spec.provider == "cuda" and not (cuda_offered() and cuda_driver_present()):
                matrix.cells += [Cell(spec.key, p, f.name, declared_valid=declared[p], note="no CUDA GPU here",
                                      sha256=hashes[p]) for p, f in files.items()]
                continue
            say(f"preparing {spec.key}" + (f" ({' '.join(spec.requirements)})" if spec.requirements else ""))
            python, why = runtime_python(spec, cache_dir)
            for precision, path in files.items():
                cell = Cell(spec.key, precision, path.name, declared_valid=declared[precision], sha256=hashes[precision])
                matrix.cells.append(cell)
                if python is None:
                    cell.note = f"skipped: {why}"
                    continue
                say(f"{spec.key}: {path.name}")
                logits, info = run_worker(python, spec, path, inputs[precision], batch)
                cell.version, cell.provider = info.get("version"), info.get("provider")
                if logits is None:
                    cell.note = f"fails to load or run: {info['error']}"
                    cell.passed = False if cell.declared_valid else None
                    continue
                comp = compare(logits, reference, images or "test images", labels)
                cell.images, cell.agreement, cell.max_abs_diff = comp.num_images, comp.agreement, comp.max_abs_diff
                failures = _judge(comp, tolerance_for(precision, "cuda" if spec.provider == "cuda" else "cpu"),
                                  f"{precision}/{spec.key}")
                if cell.declared_valid:
                    cell.passed = not failures
                    cell.note = "; ".join(failures)
                else:
                    cell.note = "declared not validated for this runtime" + (f" ({'; '.join(failures)})" if failures else "")
    return matrix


def record_matrix(files: dict[str, Path], matrix: Matrix) -> None:
    """Add every cell that passed to its file's ``validated_runtimes`` metadata (kept per runtime
    version and provider; the file is rewritten through ``save_checked``). The cells, and a validation
    report beside the file that judged its bytes before, then name the rewritten bytes (only the
    metadata changed)."""
    import onnx

    from aperture_zoo.files import file_sha256

    for precision, path in files.items():
        before = file_sha256(path)
        proto = onnx.load(str(path))
        meta = {p.key: p.value for p in proto.metadata_props}
        entries = json.loads(meta.get("validated_runtimes", "[]"))
        for c in matrix.cells:
            if c.precision != precision or not c.passed:
                continue
            runtime = "opencv-dnn" if c.runtime.startswith("opencv") else "onnxruntime"
            entries = [e for e in entries if (e.get("runtime"), e.get("version"), e.get("provider"))
                       != (runtime, c.version, c.provider)]
            entries.append({"runtime": runtime, "version": c.version, "provider": c.provider, "images": c.images,
                            "agreement": round(c.agreement or 0.0, 2), "max_abs_diff": float(f"{c.max_abs_diff:.3g}")})
        set_metadata(proto, {"validated_runtimes": json.dumps(entries)})
        save_checked(proto, path)
        after = file_sha256(path)
        for c in matrix.cells:
            if c.precision == precision:
                c.sha256 = after
        _follow_report(path, before, after)


def _follow_report(path: Path, before: str, after: str) -> None:
    """The file's own report judged it before its metadata named more runtimes: it follows the new bytes."""
    from aperture_zoo.files import atomic_write_text, read_json

    from .validate import report_path

    report = report_path(path)
    if report.is_file():
        data = read_json(report)
        if isinstance(data, dict) and data.get("onnx_sha256") == before:
            data["onnx_sha256"] = after
            atomic_write_text(report, json.dumps(data, indent=2, allow_nan=False) + "\n")


def matrix_images(data_dir: str | os.PathLike[str] | None, max_images: int = 1000, seed: int = 0
                ) -> tuple[np.ndarray, np.ndarray, str]:
    """Pixels in [0, 1], labels and a description: a stratified sample of the CIFAR-10 test set, or
    the bundled sample images (30 CIFAR-10 test images) without a data folder."""
    if data_dir is not None:
        from aperture_zoo.data import load_split, subset

        full = load_split("test", data_dir)
        test = subset(full, max_images if max_images < len(full) else None, seed)
        return test.images.astype(np.float32) / 255.0, test.labels, f"{len(test):,} CIFAR-10 test images (stratified)"
    from aperture_zoo.images import load_image
    from aperture_zoo.registry import CIFAR10_CLASSES
    from aperture_zoo.samples import sample_images

    found = sample_images()
    pixels = np.stack([load_image(p, (32, 32))[0] for p, _ in found]).transpose(0, 3, 1, 2).astype(np.float32) / 255.0
    labels = np.asarray([CIFAR10_CLASSES.index(label) for _, label in found])
    return pixels, labels, f"the {len(found)} bundled CIFAR-10 test images"


def format_matrix(matrix: Matrix) -> str:
    """The matrix as a Markdown table: a row per runtime, a column per precision."""
    precisions = list(dict.fromkeys(c.precision for c in matrix.cells))
    rows: dict[str, dict[str, Cell]] = {}
    for c in matrix.cells:
        rows.setdefault(c.runtime, {})[c.precision] = c
    head = ["runtime", "version", *[f"{p}: agreement, max |Δlogit|" for p in precisions]]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for key, by_precision in rows.items():
        first = next(iter(by_precision.values()))
        version = " ".join(s for s in (first.version or next((c.version for c in by_precision.values() if c.version), ""),
                                       "CUDA" if key.endswith("cuda") else "") if s) or "—"
        lines.append("| " + " | ".join([key, version, *[_cell_text(by_precision.get(p)) for p in precisions]]) + " |")
    return "\n".join(lines)


def _cell_text(c: Cell | None) -> str:
    if c is None:
        return "—"
    if c.agreement is None:
        text = "fails to load" if c.note.startswith("fails") else "not run"
        return text if c.declared_valid else f"{text} (declared not valid)"
    text = f"{c.agreement:.1f} %, {c.max_abs_diff:.2g}"
    if not c.declared_valid:
        return f"{text} (declared not valid)"
    return text if c.passed else f"**{text} FAIL**"


def ordered_files(files: dict[str, Path]) -> dict[str, Path]:
    """The files, checked to exist, in the order fp32, fp16, int8."""
    order = {"fp32": 0, "fp16": 1, "int8": 2}
    missing = [str(p) for p in files.values() if not Path(p).is_file()]
    if missing:
        raise ExportError(f"ONNX file(s) {', '.join(missing)} not found; export them with `aperture export NAME --onnx`")
    return dict(sorted(files.items(), key=lambda kv: order.get(kv[0], 9)))


def measure_model(
    model,
    *,
    files: dict[str, Path] | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    max_images: int = 1000,
    runtimes: Sequence[RuntimeSpec] = DEFAULT_RUNTIMES,
    cache_dir: Path | None = None,
    weights_sha256: str | None = None,
    record: bool = False,
    progress: Callable[[str], None] | None = None,
    more_cells: Callable[[np.ndarray, np.ndarray, np.ndarray, str], list[Cell]] | None = None,
) -> Matrix:
    """The matrix of ``model``'s files: ``files`` (precision -> path, from ``aperture export``), or
    fp32 and fp16 (and int8 with ``data_dir``, calibrated on its training images) exported here.
    ``record`` writes the passing cells into the given files' ``validated_runtimes`` metadata.
    ``more_cells(pixels, reference, labels, described)`` adds cells on the same images (the other formats'
    rows: ``format_matrix.run_format_rows``)."""
    import torch

    from aperture_zoo.model import evaluating, on_device

    from .onnx_export import NormalizedClassifier
    from .pipeline import export_model
    from .validate import _torch_logits

    from aperture_zoo.provenance import check_onnx

    from .onnx_export import state_dict_sha256

    say = progress or (lambda _m: None)
    made_from = weights_sha256 or state_dict_sha256(model)
    for path in (files or {}).values():  # a file of other weights would be judged against the wrong reference
        if Path(path).is_file():
            check_onnx(path, made_from, model.spec.name)
    pixels, labels, described = matrix_images(data_dir, max_images)
    with torch.no_grad(), evaluating(model):
        reference = _torch_logits(NormalizedClassifier(on_device(model, "cpu")), pixels, "cpu")
    with tempfile.TemporaryDirectory(prefix="aperture_matrix_files_") as tmp:
        if files is None:
            say("exporting fp32, fp16" + (" and int8" if data_dir else "") + " files")
            result = export_model(model, tmp, fp16=True, int8=data_dir is not None, data_dir=data_dir,
                                  run_validation=False, weights_sha256=weights_sha256)
            exported = {read_metadata(p).get("precision", "fp32"): p for p in result.files}
        else:
            exported = ordered_files(files)
        matrix = run_matrix(exported, pixels, reference, labels=labels, runtimes=runtimes, cache_dir=cache_dir,
                            images=described, progress=say)
        matrix.weights_sha256 = made_from
        if record and files is not None:
            record_matrix(exported, matrix)
    if more_cells is not None:
        matrix.cells += more_cells(pixels, reference, labels, described)
    return matrix
