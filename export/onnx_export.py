"""PyTorch -> ONNX: one self-describing, checked file per model.

The file is a product of its own for apps without PyTorch, so it carries everything needed to use
it: named input ``pixel_values`` (N x 3 x 32 x 32 float32 in [0, 1]), outputs ``logits``
(N x classes) and ``probabilities`` (the weights' calibrator applied to the logits, computed in
the graph after the ``logits`` output, in float32: calibrated when the weights carry one),
CIFAR-10 normalisation inside the graph (apps feed plain pixels), optionally flip test-time
augmentation inside the graph too, and ``metadata_props`` with the architecture, spec, class
names, mean/std, calibrator, TTA, weights SHA-256, opset and package version. Every written file passes ``onnx.checker.check_model(full_check=True)`` and
strict shape inference.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import os
import warnings
from pathlib import Path
from typing import Literal

import onnx
import torch
from torch import Tensor, nn

from aperture_zoo.calibrators import MARGIN_FLOOR, T_RANGE, Calibrator, check_temperature, temperature_argument
from aperture_zoo.files import atomic_path
from aperture_zoo.model import ResNet, evaluating, on_device

from .compat import check_opset, stamp_lowest_ir
from .errors import ExportError, OnnxFileError

INPUT_NAME = "pixel_values"
OUTPUT_NAME = "logits"
PROBS_NAME = "probabilities"
OUTPUT_NAMES = [OUTPUT_NAME, PROBS_NAME]
DEFAULT_OPSET = 18
Exporter = Literal["dynamo", "legacy"]
EXPORTERS: tuple[str, ...] = ("dynamo", "legacy")


class NormalizedClassifier(nn.Module):
    """``model((pixels - mean) / std)``: the network as apps see it, taking pixels in [0, 1].

    ``tta=True`` averages the logits of the image and its mirror (``eval --tta``), so an app gets
    test-time augmentation by swapping the file.
    """

    def __init__(self, model: ResNet, tta: bool = False) -> None:
        super().__init__()
        self.model = model
        self.tta = tta
        self.register_buffer("mean", torch.tensor(model.spec.mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(model.spec.std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, pixel_values: Tensor) -> Tensor:
        x = (pixel_values - self.mean) / self.std
        logits = self.model(x)
        return 0.5 * (logits + self.model(x.flip(3))) if self.tta else logits


class ExportedClassifier(nn.Module):
    """The exported graph: ``(logits, calibrator.apply(logits))`` of the (optionally normalising
    and flip-averaging) network."""

    def __init__(self, model: ResNet, *, normalize: bool = True, tta: bool = False,
                 calibrator: Calibrator | None = None) -> None:
        from aperture_zoo.predict import check_head

        check_head(model)  # every format's probabilities come from here: a features model has no classes
        super().__init__()
        if not normalize and tta:
            self.net: nn.Module = _Flip(model)
        else:
            self.net = NormalizedClassifier(model, tta) if normalize else model
        self.probabilities = CalibratedProbabilities(calibrator or Calibrator("temperature", 1.0))

    def forward(self, pixel_values: Tensor) -> tuple[Tensor, Tensor]:
        logits = self.net(pixel_values)
        return logits, self.probabilities(logits)


class CalibratedProbabilities(nn.Module):
    """``Calibrator.apply`` as graph nodes after the logits (the numpy map is the reference:
    ``validate`` compares the two within 1e-4). The one-temperature kind stays ``softmax(z / T)``."""

    def __init__(self, cal: Calibrator) -> None:
        super().__init__()
        self.cal = cal

    def forward(self, z: Tensor) -> Tensor:
        cal = self.cal
        if cal.kind == "temperature":
            return (z / cal.temperature).softmax(-1)
        top = z.max(-1, keepdim=True).values
        d = top - z
        if cal.knots:
            edges = (0.0, *cal.knots)
            q = cal.slopes[-1] * (d - edges[-1]).clamp(min=0.0)
            for lo, hi, slope in zip(edges, edges[1:], cal.slopes):
                q = q + slope * (d - lo).clamp(0.0, hi - lo)
        else:
            q = d if cal.power == 1.0 else d.pow(cal.power)
        if not cal.weights:
            return (q * (-1.0 / cal.temperature)).softmax(-1)
        feats = {}
        if "log_margin" in dict(cal.weights):
            feats["log_margin"] = self.margin(z).clamp(min=MARGIN_FLOOR).log()
        if "entropy" in dict(cal.weights):
            log_p = (z - top).log_softmax(-1)
            feats["entropy"] = -(log_p.exp() * log_p).sum(-1, keepdim=True)
        log_t = sum(w * feats[name] for name, w in cal.weights) + math.log(cal.temperature)
        t = log_t.clamp(math.log(T_RANGE[0]), math.log(T_RANGE[1])).exp()  # type: ignore[union-attr]
        return (-q / t).softmax(-1)


    @staticmethod
    def margin(z: Tensor) -> Tensor:
        """The top logit minus the second (0 for a tie)."""
        top2 = z.topk(2, dim=-1).values
        return top2[:, :1] - top2[:, 1:]


class _Flip(nn.Module):
    def __init__(self, model: ResNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return 0.5 * (self.model(x) + self.model(x.flip(3)))


def state_dict_sha256(model: nn.Module) -> str:
    """SHA-256 of the weights as safetensors bytes: an identity for weights that have no file."""
    from safetensors.torch import save

    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return hashlib.sha256(save(tensors)).hexdigest()


def build_metadata(
    model: ResNet,
    *,
    opset: int,
    normalize: bool,
    exporter: str,
    batch: int | None,
    weights_sha256: str | None,
    precision: str = "fp32",
    calibrator: Calibrator | None = None,
    tta: bool = False,
) -> dict[str, str]:
    """The ``metadata_props`` of an exported file (all values strings; lists and dicts as JSON)."""
    from aperture_zoo._version import __version__

    spec = model.spec
    sha_of = "file" if weights_sha256 else "state_dict"
    return {
        "format": "aperture_zoo.onnx/1",
        "arch": spec.name,
        "spec": json.dumps(spec.arch_dict(), sort_keys=True),
        "label_names": json.dumps(list(spec.label_names)),
        "mean": json.dumps(list(spec.mean)),
        "std": json.dumps(list(spec.std)),
        "normalize_in_graph": json.dumps(normalize),
        "input": json.dumps({"name": INPUT_NAME, "layout": "NCHW", "dtype": "float32",
                             "range": [0.0, 1.0] if normalize else "normalised",
                             "shape": ["N" if batch is None else batch, *spec.input_size]}),
        "output": json.dumps({"name": OUTPUT_NAME, "kind": "logits", "shape": ["N" if batch is None else batch, spec.num_classes]}),
        "probabilities": json.dumps({"name": PROBS_NAME, "kind": "calibrator.apply(logits)",
                                     "calibrated": calibrator is not None}),
        **({"calibrator": json.dumps(calibrator.to_dict())} if calibrator is not None else {}),
        # the one-temperature kind (or none: the plain softmax) also as before, for older readers
        **({"temperature": repr(float(calibrator.temperature if calibrator is not None else 1.0))}
           if calibrator is None or calibrator.kind == "temperature" else {}),
        "tta": "flip" if tta else "none",
        "weights_sha256": weights_sha256 or state_dict_sha256(model),
        "weights_sha256_of": sha_of,
        "opset": str(opset),
        "precision": precision,
        "exporter": exporter,
        "torch_version": torch.__version__,
        "onnx_version": onnx.__version__,
        "package_version": __version__,
    }


def _export_dynamo(module: nn.Module, example: Tensor, opset: int, dynamic: bool) -> onnx.ModelProto:
    dynamic_shapes = ({0: torch.export.Dim("batch", min=1)},) if dynamic else None
    quiet = io.StringIO()  # the exporter prints progress lines; the CLI shows its own
    with contextlib.redirect_stdout(quiet), warnings.catch_warnings(), _quiet_loggers("torch.onnx", "onnxscript", "onnx_ir"):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module, (example,), None, dynamo=True, input_names=[INPUT_NAME], output_names=OUTPUT_NAMES,
            dynamic_shapes=dynamic_shapes, opset_version=opset, optimize=True, verbose=False,
        )
    return program.model_proto


@contextlib.contextmanager
def _quiet_loggers(*names: str):
    """Silence the exporter's log lines (e.g. a failed opset down-conversion with its traceback):
    what went wrong is reported by ``to_onnx`` itself."""
    loggers = [logging.getLogger(n) for n in names]
    saved = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, saved):
            lg.setLevel(level)


def graph_opset(proto: onnx.ModelProto) -> int | None:
    """The default-domain (``ai.onnx``) opset the graph really uses."""
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)


def _export_legacy(module: nn.Module, example: Tensor, opset: int, dynamic: bool) -> onnx.ModelProto:
    buffer = io.BytesIO()
    axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}, PROBS_NAME: {0: "batch"}} if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript deprecation and tracer warnings
        torch.onnx.export(
            module, (example,), buffer, dynamo=False, input_names=[INPUT_NAME], output_names=OUTPUT_NAMES,
            dynamic_axes=axes, opset_version=opset, do_constant_folding=True,
        )
    return onnx.load_from_string(buffer.getvalue())


def check_model_file(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """Full checker plus strict shape inference; returns the model with inferred shapes."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
        model = onnx.load(str(path))
        return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"{str(path)!r} fails the ONNX checker: {exc}. This is a bug; please report it.") from None


def save_checked(proto: onnx.ModelProto, path: str | os.PathLike[str]) -> Path:
    """Stamp the lowest IR version (``compat.stamp_lowest_ir``), write atomically (no half-written
    file on a crash), then run the checker on the file."""
    stamp_lowest_ir(proto)
    with atomic_path(path) as tmp:
        onnx.save_model(proto, str(tmp))
    check_model_file(path)
    return Path(path)


def export_calibrator(model: ResNet, *, temperature: float | None = None, tta: bool = False,
                      calibrator: Calibrator | None = None) -> Calibrator | None:
    """The calibrator an exported file's ``probabilities`` apply, the one rule for every format: the one
    given, else the one-temperature kind of ``temperature``, else the model's own (its flip-TTA one for a
    ``tta`` graph when it has one), else its older single temperature; None: the plain softmax."""
    if calibrator is None and temperature is not None:
        calibrator = Calibrator("temperature", temperature_argument(temperature))
    if calibrator is None:
        calibrator = (tta and getattr(model, "calibrator_tta", None)) or getattr(model, "calibrator", None)
    if calibrator is None and model.temperature is not None:
        calibrator = Calibrator("temperature", check_temperature(model.temperature))
    return calibrator


def to_onnx(
    model: ResNet,
    path: str | os.PathLike[str],
    *,
    opset: int = DEFAULT_OPSET,
    batch: int | None = None,
    normalize: bool = True,
    exporter: Exporter = "dynamo",
    weights_sha256: str | None = None,
    temperature: float | None = None,
    tta: bool = False,
    calibrator: Calibrator | None = None,
) -> Path:
    """Export ``model`` to a checked, self-describing ONNX file at ``path``.

    ``batch=None`` gives a dynamic batch axis, an int a fixed one. ``normalize=False`` exports the
    bare network (input already normalised with the metadata's mean/std). ``exporter="legacy"``
    uses the TorchScript exporter, the fallback when torch.export cannot trace a model.
    ``weights_sha256`` is the SHA-256 of the weights file the model was loaded from (hashed from
    the state dict when omitted). ``calibrator`` (default: the model's own, see ``load()``; with
    ``tta`` its flip-TTA one when it has one; ``temperature`` gives the one-temperature kind) makes
    the ``probabilities`` output calibrated; without one it is the plain softmax and the metadata
    says it is uncalibrated. ``tta=True`` puts flip test-time augmentation inside the graph.
    """
    if exporter not in EXPORTERS:
        raise ExportError(f"unknown exporter {exporter!r}; use one of {', '.join(EXPORTERS)}")
    if batch is not None and batch < 1:
        raise ExportError(f"--batch must be 'dynamic' or a positive integer, got {batch}")
    check_opset(opset, exporter)
    model = on_device(model, "cpu")  # the caller's model stays where it is, in the mode it is in
    calibrator = export_calibrator(model, temperature=temperature, tta=tta, calibrator=calibrator)
    module = ExportedClassifier(model, normalize=normalize, tta=tta, calibrator=calibrator)
    # Batch 2 at trace time: torch.export specialises sizes 0 and 1, which would pin the axis.
    example = torch.rand(batch or 2, *model.spec.input_size)
    try:
        with torch.no_grad(), evaluating(module):
            proto = (_export_dynamo if exporter == "dynamo" else _export_legacy)(
                module, example, opset, batch is None
            )
    except Exception as exc:  # noqa: BLE001 - torch raises many unrelated types here
        other = "legacy" if exporter == "dynamo" else "dynamo"
        raise ExportError(
            f"the {exporter} ONNX exporter failed on {model.spec.name}: {type(exc).__name__}: "
            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}. Retry with "
            f"--exporter {other}, or another --opset."
        ) from exc
    got = graph_opset(proto)
    if got != opset:
        # The dynamo exporter writes opset 18+ and converts down on request; when the conversion
        # fails it keeps 18 with only a log line. A file must have the opset it says it has.
        hint = "use --exporter legacy for opsets below 18, or --opset 18 or newer" if opset < 18 else "use another --opset"
        raise ExportError(
            f"the {exporter} exporter wrote opset {got} for {model.spec.name} where --opset {opset} "
            f"was asked (it could not convert the graph); {hint}"
        )
    meta = build_metadata(
        model, opset=opset, normalize=normalize, exporter=exporter, batch=batch, weights_sha256=weights_sha256,
        calibrator=calibrator, tta=tta,
    )
    set_metadata(proto, meta)
    proto.doc_string = (
        f"aperture_zoo {model.spec.name}: CIFAR-10 classifier. Input {INPUT_NAME} float32 NCHW "
        f"{'pixels in [0, 1]' if normalize else 'normalised with metadata mean/std'}; outputs {OUTPUT_NAME} and "
        f"{PROBS_NAME} ({'calibrated: ' + calibrator.describe() if calibrator is not None else 'uncalibrated softmax'})"
        f"{'; flip test-time augmentation in the graph' if tta else ''}."
    )
    return save_checked(proto, path)


def set_metadata(proto: onnx.ModelProto, meta: dict[str, str]) -> None:
    """Replace ``metadata_props`` keys with ``meta`` (other keys are kept)."""
    existing = {p.key: p.value for p in proto.metadata_props}
    existing.update(meta)
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, existing)


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """``metadata_props`` of an ONNX file, read without loading the weights into memory twice."""
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001
        raise OnnxFileError(f"{str(path)!r} is not an ONNX file ({exc}); export it again") from None
    return {p.key: p.value for p in proto.metadata_props}
