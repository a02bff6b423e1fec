"""The deployment formats a model is exported to, what each needs installed, and where its files go.

Torch-free (``aperture predict --runtime`` and the CLI's option checks import it). One table says, per
format, the file suffix, the precisions it is written in, the pip extra that brings its tool chain and
runtime, and whether that runtime runs on this kind of machine: the CLI, the pipeline, the sessions and
the tests all read it, so a format is added in one place.

A missing tool chain is one line naming the install command (``MissingExtraError``), never a traceback
from deep inside an import.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import ExportError


class MissingExtraError(ExportError):
    """A format's tool chain or runtime is not installed; the message gives the pip command."""


@dataclass(frozen=True)
class Format:
    name: str                        # the --format value
    suffix: str                      # of the file (a folder for Core ML's .mlpackage)
    precisions: tuple[str, ...]      # fp32 first; then its own reduced precisions
    extra: str | None                # pip extra: pip install 'aperture_zoo[EXTRA]'
    modules: tuple[str, ...]         # what must import for the export (the tool chain)
    runtime_modules: tuple[str, ...]  # what must import to run a file (None: not run here)
    runtime: str | None              # the runtime's name in reports; None: not run on this kind of machine
    what: str                        # one line for --help and the cards


FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("onnx", ".onnx", ("fp32", "fp16", "int8"), None, ("onnx",), ("onnxruntime",), "onnxruntime",
           "ONNX: onnxruntime, OpenCV DNN, the browser"),
    Format("openvino", ".xml", ("fp32", "bf16", "int8"), "openvino", ("openvino", "nncf"), ("openvino",),
           "openvino", "OpenVINO IR (.xml + .bin): Intel/AMD servers; bf16 is an inference hint, int8 is NNCF's"),
    Format("executorch", ".pte", ("fp32", "int8"), "executorch", ("executorch",), ("executorch",),
           "executorch", "ExecuTorch program, XNNPACK delegate: Android/iOS apps; int8 is XNNPACK's PT2E quantisation"),
    Format("tflite", ".tflite", ("fp32", "int8"), "litert", (), ("ai_edge_litert",), "litert",
           "LiteRT (TensorFlow Lite) flatbuffer: Android, microcontrollers; int8 is dynamic-range weights"),
    Format("coreml", ".mlpackage", ("fp32", "fp16"), "coreml", ("coremltools",), (), None,
           "Core ML ML Program (.mlpackage): Apple systems; checked at the spec level, not run here"),
)}
FORMAT_NAMES: tuple[str, ...] = tuple(FORMATS)
# The precision flags of `aperture export` and the formats that have each one.
PRECISION_FLAGS: dict[str, str] = {"fp16": "--fp16", "bf16": "--bf16", "int8": "--int8"}


def parse_formats(values: list[str] | str | None, onnx_flag: bool = False) -> list[str]:
    """``--format openvino,tflite`` (repeatable, comma-separated) plus ``--onnx``: the formats, in table order."""
    if isinstance(values, str):
        values = [values]
    names = [v.strip().lower() for text in (values or []) for v in text.split(",") if v.strip()]
    bad = [n for n in names if n not in FORMATS]
    if bad:
        raise ExportError(f"unknown --format {', '.join(bad)}; choose from {', '.join(FORMAT_NAMES)} "
                          "(several: --format onnx,openvino)")
    chosen = set(names) | ({"onnx"} if onnx_flag else set())
    if not chosen:
        raise ExportError(f"choose a format: --format {'|'.join(FORMAT_NAMES)} (several at once: "
                          "--format onnx,openvino), or --onnx")
    return [n for n in FORMAT_NAMES if n in chosen]


def precisions_for(formats: list[str], fp16: bool = False, bf16: bool = False, int8: bool = False
                   ) -> dict[str, list[str]]:
    """Per format, the precisions to write: fp32, plus each asked reduced precision the format has.

    A flag that none of the chosen formats has is an error naming the ones that do.
    """
    asked = [p for p, on in (("fp16", fp16), ("bf16", bf16), ("int8", int8)) if on]
    for p in asked:
        if not any(p in FORMATS[f].precisions for f in formats):
            having = [f for f in FORMAT_NAMES if p in FORMATS[f].precisions]
            raise ExportError(f"{PRECISION_FLAGS[p]} applies to the {', '.join(having)} format(s), not "
                              f"{', '.join(formats)}; add --format {having[0]} or drop {PRECISION_FLAGS[p]}")
    return {f: ["fp32", *[p for p in asked if p in FORMATS[f].precisions]] for f in formats}


def install_hint(fmt: Format) -> str:
    return f"pip install 'aperture_zoo[{fmt.extra}]'" if fmt.extra else "pip install aperture_zoo"


def missing_modules(modules: tuple[str, ...]) -> list[str]:
    """The modules of ``modules`` that do not import here (found by the import system, not imported)."""
    return [m for m in modules if importlib.util.find_spec(m) is None]


def require(name: str, purpose: str = "export") -> Format:
    """The format ``name``, checked to have its tool chain (``purpose='export'``) or runtime ('run') installed."""
    fmt = FORMATS[name]
    if purpose == "run" and fmt.runtime is None:
        raise ExportError(f"{name} files do not run on this system ({fmt.what}); run them where they are meant to")
    missing = missing_modules(fmt.runtime_modules if purpose == "run" else fmt.modules)
    if missing:
        verb = "run" if purpose == "run" else "export"
        raise MissingExtraError(f"to {verb} {name} files, {', '.join(missing)} must be installed: {install_hint(fmt)}")
    return fmt


def format_of(path: str | os.PathLike[str]) -> Format:
    """The format of an exported file, by its suffix (``.mlpackage`` is a folder)."""
    suffix = Path(path).suffix.lower()
    for fmt in FORMATS.values():
        if fmt.suffix == suffix:
            return fmt
    raise ExportError(f"{str(path)!r} is not an exported model file; its suffix should be one of "
                      f"{', '.join(f.suffix for f in FORMATS.values())}")


def file_name(stem: str, fmt: str, precision: str) -> str:
    """``resnet22.onnx``, ``resnet22.int8.pte``, ``resnet22.bf16.xml``: fp32 has no tag (as ONNX always had)."""
    tag = "" if precision == "fp32" else f".{precision}"
    return f"{stem}{tag}{FORMATS[fmt].suffix}"


def companion_files(path: str | os.PathLike[str]) -> list[Path]:
    """Every path making up one exported model: OpenVINO's IR is an .xml with its .bin beside it
    (``files.model_file_parts``: the one rule, which the hash of a model follows too)."""
    from aperture_zoo.files import model_file_parts

    return model_file_parts(path)
