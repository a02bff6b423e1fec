"""onnxruntime sessions with an honest provider choice (torch-free).

onnxruntime silently falls back to CPU when a CUDA session cannot be created (no GPU, missing
CUDA/cuDNN libraries), and onnxruntime-gpu lists ``CUDAExecutionProvider`` even on machines
without a GPU. So the provider actually used is read back from the session, and asking for CUDA
where it does not run is an error instead of a quietly slower (or differently rounded) answer.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from .errors import ExportError, OnnxFileError

Provider = Literal["auto", "cuda", "cpu"]
PROVIDERS: tuple[str, ...] = ("auto", "cuda", "cpu")
_CUDA = "CUDAExecutionProvider"
_CPU = "CPUExecutionProvider"


# The CUDA execution provider's options we expose, and the values each takes. Unset keys keep
# onnxruntime's own defaults: which setting is fastest depends on the GPU, the cuDNN version and
# the batch, and is to be chosen by measuring (`aperture bench --cuda-options ...`), not guessed.
CUDA_OPTIONS: dict[str, tuple[str, ...]] = {
    "cudnn_conv_algo_search": ("EXHAUSTIVE", "HEURISTIC", "DEFAULT"),
    "prefer_nhwc": ("0", "1"),
    "enable_cuda_graph": ("0", "1"),
}
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def parse_cuda_options(options: str | Mapping[str, object] | None) -> dict[str, str]:
    """``"cudnn_conv_algo_search=HEURISTIC,prefer_nhwc=1"`` (or a dict) -> checked provider options.

    Unknown keys and values are an ExportError naming the valid ones; booleans accept 1/0/true/false.
    """
    if options is None:
        return {}
    if isinstance(options, str):
        pairs = []
        for item in (part.strip() for part in options.split(",")):
            if not item:
                continue
            key, sep, value = item.partition("=")
            if not sep:
                raise ExportError(f"--cuda-options {item!r}: expected key=value, e.g. cudnn_conv_algo_search=HEURISTIC")
            pairs.append((key.strip(), value.strip()))
    else:
        pairs = [(str(k), str(v)) for k, v in options.items()]
    out: dict[str, str] = {}
    for key, value in pairs:
        if key not in CUDA_OPTIONS:
            raise ExportError(f"unknown CUDA provider option {key!r}; valid: {', '.join(CUDA_OPTIONS)}")
        valid = CUDA_OPTIONS[key]
        norm = value.upper() if key == "cudnn_conv_algo_search" else \
            "1" if value.lower() in _TRUE else "0" if value.lower() in _FALSE else value
        if norm not in valid:
            raise ExportError(f"CUDA provider option {key}={value!r} is not valid; use one of {', '.join(valid)}")
        out[key] = norm
    return out


def cuda_options_note(options: Mapping[str, str], session) -> str | None:
    """The one line to show when CUDA provider options were given but the session does not run on CUDA."""
    if not options or session_device(session) == "cuda":
        return None
    return (f"CUDA provider options ({', '.join(f'{k}={v}' for k, v in options.items())}) are valid but unused: "
            "this session runs on the CPU provider")


def cuda_offered() -> bool:
    """True when this onnxruntime build has the CUDA execution provider compiled in."""
    import onnxruntime as ort

    return _CUDA in ort.get_available_providers()


def cuda_driver_present() -> bool:
    """Whether the NVIDIA driver library loads: without it a CUDA session cannot start.

    Probing this first keeps ``auto`` from making onnxruntime print a CUDA load failure on every
    CPU-only machine that has onnxruntime-gpu installed.
    """
    import ctypes
    import sys

    name = "nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1"
    try:
        ctypes.CDLL(name)
    except OSError:
        return False
    return True


def _preload_cuda_libraries() -> None:
    # onnxruntime-gpu >= 1.21 can load the CUDA/cuDNN libraries shipped in pip wheels (e.g. the
    # ones torch brings); without this a CUDA session may fail to start on a working GPU machine.
    import onnxruntime as ort

    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        try:
            preload()
        except Exception:  # noqa: BLE001 - best effort; session creation reports the real failure
            pass


def session_options(threads: int | None = None) -> "object":
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors only: CUDA fallback warnings are reported by us instead
    if threads:
        opts.intra_op_num_threads = threads
    return opts


def create_session(
    path: str | os.PathLike[str] | bytes,
    provider: Provider = "cpu",
    *,
    threads: int | None = None,
    cuda_tf32: bool = False,
    cuda_options: str | Mapping[str, object] | None = None,
):
    """An ``InferenceSession`` on the requested provider, verified to really run there.

    ``auto`` uses CUDA when it works and CPU otherwise; ``cuda`` raises ExportError when the
    session does not get the CUDA provider. TF32 is off by default on CUDA so numbers compare
    with an fp32 reference. ``cuda_options`` (see ``CUDA_OPTIONS``) are checked always and passed
    to the CUDA provider when it is used; ``cuda_options_note`` words that they were not.
    """
    import onnxruntime as ort

    extra = parse_cuda_options(cuda_options)
    if isinstance(path, (str, os.PathLike)):
        check_onnx_path(path)
    want_cuda = check_provider(provider)
    providers: list = [_CPU]
    if want_cuda:
        _preload_cuda_libraries()
        providers = [(_CUDA, {"use_tf32": "1" if cuda_tf32 else "0", **extra}), _CPU]
    source = path if isinstance(path, bytes) else str(path)
    try:
        session = ort.InferenceSession(source, sess_options=session_options(threads), providers=providers)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own untyped errors
        _refuse_too_new(path, str(exc), ort.__version__)
        raise OnnxFileError(
            f"onnxruntime could not load {_describe(path)} ({str(exc).strip().splitlines()[0]}); "
            "it is not a valid ONNX model or was written by a newer exporter. Export it again "
            "with `aperture export NAME --onnx`."
        ) from None
    if provider == "cuda" and _CUDA not in session.get_providers():
        raise ExportError(
            "--provider cuda was requested but onnxruntime fell back to CPU (no usable GPU, or the "
            "CUDA/cuDNN libraries onnxruntime-gpu needs are missing). Check `nvidia-smi` and the "
            "onnxruntime-gpu CUDA requirements, or use --provider cpu."
        )
    return session


def _refuse_too_new(path: object, message: str, version: str) -> None:
    """A file stamped with a newer IR version than this onnxruntime reads (e.g. IR 10, written by
    exports before files carried the lowest IR version their opset needs): say so, and how to fix it."""
    import re

    found = re.search(r"Unsupported model IR version: (\d+), max supported IR version: (\d+)", message)
    if found:
        raise OnnxFileError(
            f"onnxruntime {version} reads ONNX IR versions up to {found[2]}, but {_describe(path)} is stamped "
            f"IR {found[1]} (an older aperture_zoo export): export it again with `aperture export NAME --onnx`, "
            "which stamps the lowest IR version its opset needs, or upgrade onnxruntime"
        )


def check_provider(provider: str) -> bool:
    """Refuse, before any work is done, a provider that cannot run here; True when CUDA is to be tried.

    Passing this does not prove a CUDA session will start (libraries may be missing): the
    provider a session really got is checked by ``create_session``.
    """
    import onnxruntime as ort

    if provider not in PROVIDERS:
        raise ExportError(f"unknown provider {provider!r}; use one of {', '.join(PROVIDERS)}")
    if provider == "cuda" and not cuda_offered():
        raise ExportError(
            "--provider cuda was requested but this onnxruntime has no CUDA execution provider "
            f"(available: {', '.join(ort.get_available_providers())}). Install onnxruntime-gpu on "
            "a machine with an NVIDIA GPU, or use --provider cpu."
        )
    if provider == "cuda" and not cuda_driver_present():
        raise ExportError(
            "--provider cuda was requested but no NVIDIA driver was found (libcuda could not be "
            "loaded), so onnxruntime would silently run on CPU. Run on a machine with an NVIDIA "
            "GPU and driver, or use --provider cpu."
        )
    return provider == "cuda" or (provider == "auto" and cuda_offered() and cuda_driver_present())


def session_device(session) -> str:
    """'cuda' or 'cpu': where the session's first provider runs."""
    return "cuda" if session.get_providers()[0] == _CUDA else "cpu"


def check_onnx_path(path: str | os.PathLike[str]) -> Path:
    """Fail early, and clearly, on a path that cannot be an ONNX model."""
    path = Path(path)
    if not path.exists():
        raise OnnxFileError(
            f"ONNX file {str(path)!r} does not exist; check the path, or create it with "
            "`aperture export NAME --pretrained --onnx`"
        )
    if path.is_dir():
        raise OnnxFileError(f"{str(path)!r} is a directory; pass the .onnx file inside it")
    if not path.is_file():  # a FIFO or device would block onnxruntime's read forever
        raise OnnxFileError(f"{str(path)!r} is not a regular file (a pipe or device?); pass an .onnx file")
    return path


def _describe(path: object) -> str:
    return "the in-memory model" if isinstance(path, bytes) else repr(str(path))
