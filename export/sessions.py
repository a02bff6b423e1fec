"""One small session interface over every runtime a file runs in (torch-free except ExecuTorch's own runtime).

``validate`` and the classifiers were written against onnxruntime's ``InferenceSession``; the other
runtimes are adapted to the few calls they use, so one validation and one classifier serve every
format instead of a copy per runtime:

    get_inputs() / get_outputs()  -> [Port(name, shape, type)]   (shape: ints, a str for a dynamic axis)
    run(output_names | None, {input_name: array}) -> [arrays]
    get_providers()               -> [what ran it, e.g. "openvino 2026.4.1 CPU bf16"]
    get_modelmeta().custom_metadata_map -> the file's metadata (the ONNX keys, from the format's own store)

``open_session(path)`` picks the runtime by the file's suffix (``formats.format_of``).
"""

from __future__ import annotations

import abc
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .errors import OnnxFileError
from .formats import FORMATS, format_of, require

_TYPES = {np.dtype(np.float32): "tensor(float)", np.dtype(np.float16): "tensor(float16)"}


@dataclass(frozen=True)
class Port:
    name: str
    shape: list
    type: str = "tensor(float)"


@dataclass
class ModelMeta:
    custom_metadata_map: dict[str, str] = field(default_factory=dict)


class RuntimeSession(Protocol):
    def get_inputs(self) -> list[Any]: ...
    def get_outputs(self) -> list[Any]: ...
    def run(self, output_names: list[str] | None, feed: dict[str, np.ndarray]) -> list[np.ndarray]: ...
    def get_providers(self) -> list[str]: ...
    def get_modelmeta(self) -> Any: ...


RUNTIMES: dict[str, str] = {"onnxruntime": "onnx", "openvino": "openvino", "executorch": "executorch",
                            "litert": "tflite", "tflite": "tflite"}  # --runtime -> the format it runs natively


def open_session(path: str | os.PathLike[str], provider: str = "auto", *, threads: int | None = None,
                 cuda_options: Any = None, runtime: str | None = None) -> RuntimeSession:
    """A session on ``path`` in ``runtime`` (default: its format's own; onnxruntime for ``.onnx``).

    OpenVINO also runs ``.onnx`` files (it reads ONNX); every other pairing is refused in one line.
    """
    fmt = format_of(path)
    runtime = _check_runtime(runtime, fmt.name)
    if runtime == "openvino" and fmt.name == "onnx":
        require("openvino", "run")
        return OpenVinoSession(Path(path), threads)
    if fmt.name == "onnx":
        from .runtime import create_session

        return create_session(path, provider, threads=threads, cuda_options=cuda_options)  # type: ignore[arg-type]
    if provider == "cuda":
        raise OnnxFileError(f"--provider cuda applies to ONNX files; {fmt.name} files run on the CPU here")
    require(fmt.name, "run")
    p = Path(path)
    if not p.exists():
        raise OnnxFileError(f"{str(p)!r} does not exist; export it with `aperture export NAME --format {fmt.name}`")
    return {"openvino": OpenVinoSession, "executorch": ExecuTorchSession, "tflite": LiteRtSession}[fmt.name](p, threads)


def _check_runtime(runtime: str | None, fmt: str) -> str:
    if runtime is None:
        return {v: k for k, v in RUNTIMES.items()}.get(fmt, fmt)
    if runtime not in RUNTIMES:
        raise OnnxFileError(f"unknown --runtime {runtime!r}; choose from onnxruntime, openvino, executorch, tflite")
    if RUNTIMES[runtime] != fmt and not (runtime == "openvino" and fmt == "onnx"):
        raise OnnxFileError(f"{runtime} does not run {fmt} files; pass a {FORMATS[RUNTIMES[runtime]].suffix} file "
                            f"(`aperture export NAME --format {RUNTIMES[runtime]}`), or drop --runtime")
    return runtime


class _Base(abc.ABC):
    inputs: list[Port]
    outputs: list[Port]
    provider: str
    metadata: dict[str, str]

    def get_inputs(self) -> list[Port]:
        return self.inputs

    def get_outputs(self) -> list[Port]:
        return self.outputs

    def get_providers(self) -> list[str]:
        return [self.provider]

    def get_modelmeta(self) -> ModelMeta:
        return ModelMeta(dict(self.metadata))

    def run(self, output_names: list[str] | None, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        outs = self._run(np.ascontiguousarray(next(iter(feed.values()))))
        names = [o.name for o in self.outputs]
        return outs if output_names is None else [outs[names.index(n)] for n in output_names]

    @abc.abstractmethod
    def _run(self, x: np.ndarray) -> list[np.ndarray]:
        """Every output of the file for one input batch, in the file's output order."""


class OpenVinoSession(_Base):
    """An IR compiled for the CPU with the precision hint the file carries (``runtime_options``)."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        import openvino as ov

        from .openvino_export import check_bin, precision_hint, rt_info_metadata

        core = ov.Core()
        model = core.read_model(str(path))
        if path.suffix != ".onnx":
            check_bin(path, rt_info_metadata(model))  # before the graph runs with another export's weights
        config: dict[str, Any] = {"INFERENCE_NUM_THREADS": int(threads)} if threads else {}
        # an IR says what precision it is computed in; an ONNX file is computed as it is written (f32 around
        # its int8 parts), not in the plugin's bf16 default
        config["INFERENCE_PRECISION_HINT"] = precision_hint(model) or "f32"
        self.compiled = core.compile_model(model, "CPU", config)
        self.request = self.compiled.create_infer_request()
        hint = self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        self.provider = f"openvino {ov.get_version().split('-')[0]} CPU {hint}"
        self.metadata = rt_info_metadata(model) if path.suffix != ".onnx" else _onnx_metadata(path)
        self.inputs = [Port(p.get_any_name(), _ov_shape(p.get_partial_shape())) for p in model.inputs]
        self.outputs = [Port(p.get_any_name(), _ov_shape(p.get_partial_shape())) for p in model.outputs]

    def _run(self, x: np.ndarray) -> list[np.ndarray]:
        result = self.request.infer({0: x})
        return [np.asarray(result[o]) for o in self.compiled.outputs]


def _onnx_metadata(path: Path) -> dict[str, str]:
    import onnx

    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def _ov_shape(shape) -> list:
    return [d.get_length() if d.is_static else "N" for d in shape]


class ExecuTorchSession(_Base):
    """A ``.pte`` in ExecuTorch's Python runtime (the XNNPACK delegate it was lowered to); it takes torch tensors."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        from executorch.runtime import Runtime, Verification

        from .executorch_export import read_executorch_metadata

        self.program = Runtime.get().load_program(str(path), verification=Verification.Minimal)
        self.method = self.program.load_method("forward")
        self.metadata = read_executorch_metadata(self.program)
        import json

        size = json.loads(self.metadata.get("input", "{}") or "{}").get("shape", ["N", 3, 32, 32])
        self.inputs = [Port("pixel_values", [d if isinstance(d, int) else "N" for d in size])]
        n = int(json.loads(self.metadata.get("output", "{}") or "{}").get("shape", ["N", 10])[-1])
        self.outputs = [Port("logits", ["N", n]), Port("probabilities", ["N", n])]
        self.provider = f"executorch {self.metadata.get('executorch_version', '')} XNNPACK".replace("  ", " ")
        if threads:
            _set_xnnpack_threads(threads)

    def _run(self, x: np.ndarray) -> list[np.ndarray]:
        import torch

        return [o.numpy() for o in self.method.execute([torch.from_numpy(x)])]


def _set_xnnpack_threads(threads: int) -> None:
    """ExecuTorch's XNNPACK uses its own thread pool (all cores); its size is set through the runtime."""
    try:
        from executorch.extension.pybindings import portable_lib

        setter = getattr(portable_lib, "_unsafe_reset_threadpool", None)
        if setter is not None:
            setter(int(threads))
    except ImportError:  # pragma: no cover - the runtime's layout differs between releases
        pass


class LiteRtSession(_Base):
    """A ``.tflite`` in LiteRT's interpreter (XNNPACK on CPU); the input is resized to each batch."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        from ai_edge_litert.interpreter import Interpreter

        from .litert_export import read_tflite_metadata

        self.interpreter = Interpreter(str(path), num_threads=threads or os.cpu_count() or 1)
        self.interpreter.allocate_tensors()
        self.metadata = read_tflite_metadata(path)
        detail = self.interpreter.get_input_details()[0]
        self._in = detail["index"]
        self._batch = int(detail["shape"][0])
        self.inputs = [Port("pixel_values", ["N", *[int(d) for d in detail["shape"][1:]]], _TYPES[np.dtype(detail["dtype"])])]
        outs = sorted(self.interpreter.get_output_details(), key=lambda o: o["name"])  # output_0, output_1
        self._outs = [o["index"] for o in outs]  # signature order: logits, probabilities
        self.outputs = [Port(n, ["N", int(o["shape"][-1])]) for n, o in zip(("logits", "probabilities"), outs)]
        import ai_edge_litert

        self.provider = f"litert {getattr(ai_edge_litert, '__version__', '')} CPU".replace("  ", " ")

    def _run(self, x: np.ndarray) -> list[np.ndarray]:
        if x.shape[0] != self._batch:
            self.interpreter.resize_tensor_input(self._in, list(x.shape))
            self.interpreter.allocate_tensors()
            self._batch = x.shape[0]
        self.interpreter.set_tensor(self._in, x)
        self.interpreter.invoke()
        return [np.array(self.interpreter.get_tensor(i)) for i in self._outs]
