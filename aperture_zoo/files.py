"""One home for file names, hashing, reading JSON with a clear error, and writing files safely.

A crash, ``kill -9`` or full disk must never leave a half-written weights file, card or
checkpoint where a reader would take it for a whole one: every writer goes through
``atomic_path`` (write a temporary sibling, fsync it, rename it over the target, fsync the folder).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import ApertureError

WEIGHTS_FILENAME = "model.safetensors"
CONFIG_FILENAME = "config.json"
CARD_FILENAME = "README.md"
ONNX_FILENAME = "model.onnx"
EVAL_FILENAME = "eval.json"
METRICS_FILENAME = "metrics.jsonl"
CURVES_FILENAME = "curves.png"
CONFUSION_FILENAME = "confusion.png"
REPORT_SUFFIX = ".report.json"  # an export's validation report: <stem>.report.json (<file>.report.json: see report_name)
# What an exported model is, by suffix (export/formats.py's table; a test keeps the two equal). An ONNX
# file's report drops its suffix (resnet22.int8.report.json); the others keep it, so that one precision
# in several formats gives several reports (resnet22.int8.pte.report.json).
ONNX_SUFFIX = ".onnx"
OTHER_MODEL_SUFFIXES = (".xml", ".pte", ".tflite", ".mlpackage")
MODEL_SUFFIXES = (ONNX_SUFFIX, *OTHER_MODEL_SUFFIXES)
PROVENANCE_FILENAME = "weights.json"  # a card folder's small committed record of the weights it describes
RUNTIMES_FILENAME = "runtimes.json"  # a card folder's runtime matrix (`aperture runtimes NAME -o`)
RELIABILITY_FILENAME = "reliability.png"
LICENSE_FILENAME = "LICENSE"  # the package's license, which every Hub folder carries
# What a training run or evaluation leaves beside the weights, and a card or Hub repo carries.
RUN_FILES = (EVAL_FILENAME, METRICS_FILENAME, CURVES_FILENAME, CONFUSION_FILENAME, RELIABILITY_FILENAME)
FIGURE_FILES = (CURVES_FILENAME, CONFUSION_FILENAME, RELIABILITY_FILENAME)
# A figure's PNG text chunks record what it was drawn from: <prefix>weights_sha256, <prefix>eval_sha256.
FIGURE_KEY_PREFIX = "aperture_zoo:"
# A training run's folder (train/rundir.py): its settings, resume checkpoint, lock, and the zoo's checks.
RECIPE_FILENAME = "recipe.json"
RUN_FILENAME = "run.json"
CHECKPOINT_FILENAME = "checkpoint.safetensors"
SEEDS_FILENAME = "seeds.json"  # a --seeds parent folder: the request its seed<K> runs share, and the seeds asked
LOCK_FILENAME = ".lock"
CHECK_FILENAME = "check.json"
EXPORT_REPORT_FILENAME = "export.json"
SUMMARY_JSON_FILENAME = "summary.json"
SUMMARY_MD_FILENAME = "summary.md"


class UnreadableFileError(ApertureError, ValueError):
    """A JSON file that is missing, truncated or not JSON; the message names it and the fix."""


def user_path(path: str | os.PathLike[str]) -> Path:
    """``path`` with a leading ``~`` or ``~user`` expanded as a shell does; an unknown user stays as written.

    (pathlib's ``expanduser`` raises a bare RuntimeError for ``~nouser``; ``os.path``'s leaves it.)
    """
    return Path(os.path.expanduser(os.fspath(path)))


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file, streamed (the pin every published file is checked against)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def model_file_parts(path: str | os.PathLike[str]) -> list[Path]:
    """Every path that makes up one exported model: OpenVINO's IR is its ``.xml`` and the ``.bin`` beside it."""
    p = Path(path)
    return [p, p.with_suffix(".bin")] if p.suffix == ".xml" else [p]


def model_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of an exported model as a whole, whatever its format: what a validation report, a
    runtime matrix cell and every reader of them name (``provenance``).

    One file (ONNX, ``.pte``, ``.tflite``): its bytes, as :func:`file_sha256`. An OpenVINO ``.xml``:
    the SHA-256 of the two lines ``xml <sha256 of the .xml>`` and ``bin <sha256 of the .bin>`` (the
    graph alone says nothing of the weights beside it). A folder (Core ML's ``.mlpackage``): of one line
    per entry in sorted relative-path order, ``<path> <sha256 of its bytes>`` (``<path>/`` for a folder),
    so a file renamed, added, removed or changed inside changes it; a symbolic link inside is refused (its
    target could be anything). The parts' names never count: a file renamed as a whole keeps its hash.
    """
    p = Path(path)
    if p.is_dir():
        lines = []
        for entry in sorted(p.rglob("*"), key=lambda e: e.relative_to(p).as_posix()):
            rel = entry.relative_to(p).as_posix()
            if entry.is_symlink():
                raise OSError(f"{entry} is a symbolic link inside the exported model {p}; a model folder holds "
                              "only its own files: export it again")
            lines.append(f"{rel}/" if entry.is_dir() else f"{rel} {file_sha256(entry)}")
        return hashlib.sha256(("\n".join(lines) + "\n").encode()).hexdigest()
    if p.suffix == ".xml":
        xml, weights = model_file_parts(p)
        text = f"xml {file_sha256(xml)}\nbin {file_sha256(weights)}\n"
        return hashlib.sha256(text.encode()).hexdigest()
    return file_sha256(p)


def model_exists(path: str | os.PathLike[str]) -> bool:
    """Every part of an exported model is there (an IR without its ``.bin`` is not a model)."""
    return all(part.exists() for part in model_file_parts(path))


def report_name(model_file: str) -> str:
    """The name of the validation report of ``model_file``: ``resnet22.int8.onnx`` ->
    ``resnet22.int8.report.json``, ``resnet22.int8.pte`` -> ``resnet22.int8.pte.report.json``."""
    name = Path(model_file).name
    if name.endswith(ONNX_SUFFIX):
        return name[: -len(ONNX_SUFFIX)] + REPORT_SUFFIX
    return name + REPORT_SUFFIX


def judged_file(report: str) -> str:
    """The name of the model file a report named ``report`` judged (the inverse of :func:`report_name`)."""
    stem = Path(report).name.removesuffix(REPORT_SUFFIX)
    return stem if stem.endswith(OTHER_MODEL_SUFFIXES) else stem + ONNX_SUFFIX


def read_json(
    path: str | os.PathLike[str], fix: str = "write it again", error: type[ApertureError] = UnreadableFileError
) -> Any:
    """A JSON file's value, or one line naming the file, what is wrong and ``fix``."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:  # missing, a folder, truncated, not UTF-8, not JSON
        raise error(f"{path} is not readable JSON ({exc}); {fix}") from None


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary sibling of ``path`` to write; it replaces ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, _default_mode())  # some writers (safetensors) create 0600: follow the umask like open()
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as exc:  # full or read-only disk: name the file the user asked for, not our temporary one
        tmp.unlink(missing_ok=True)
        if exc.filename is None or str(exc.filename) == str(tmp):
            exc.filename = str(path)
        raise
    except (Exception, KeyboardInterrupt):  # only a kill leaves the temp file (its writer's resume removes it)
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def _default_mode() -> int:
    """What ``open()`` would give a new file: 0666 less the process umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
