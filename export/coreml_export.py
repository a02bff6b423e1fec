"""torch -> Core ML ML Program (``.mlpackage``): fp32, and fp16 (Core ML's own reduced precision).

coremltools converts on Linux, but Core ML runs only on Apple systems, so a Core ML file is checked at
the spec level here instead of being run (``check_coreml``): its input and outputs as the ONNX contract
has them, its metadata, and a weights round trip (the weights read back from the saved package equal
the ones converted). Its card says it was not run. The metadata goes in the model's own
``userDefined`` metadata, with the class names also in its description.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from .errors import ExportError

PRECISIONS = {"fp32": "FLOAT32", "fp16": "FLOAT16"}
DEPLOYMENT_TARGET = "iOS16"  # macOS 13 / iOS 16 and later: ML Programs with fp16 and a batch range


def to_coreml(module: torch.nn.Module, input_size, path: Path, precision: str, meta: dict[str, str]) -> Path:
    """Write ``module`` as an ``.mlpackage`` (a folder) at ``path``, replacing any earlier one whole."""
    import coremltools as ct

    from .graph import MAX_BATCH, batch_dim, example_batch

    from .onnx_export import INPUT_NAME, OUTPUT_NAMES

    with _quiet():
        program = torch.export.export(module, (example_batch(input_size),), dynamic_shapes=(batch_dim(),))
        mlmodel = ct.convert(
            program.run_decompositions({}),
            inputs=[ct.TensorType(name=INPUT_NAME, shape=(ct.RangeDim(1, MAX_BATCH, 1), *input_size),
                                  dtype=np.float32)],
            outputs=[ct.TensorType(name=n) for n in OUTPUT_NAMES],
            convert_to="mlprogram", compute_precision=getattr(ct.precision, PRECISIONS[precision]),
            minimum_deployment_target=getattr(ct.target, DEPLOYMENT_TARGET),
        )
    meta = {**meta, "coremltools_version": ct.__version__, "deployment_target": DEPLOYMENT_TARGET}
    for key, value in meta.items():
        mlmodel.user_defined_metadata[key] = value
    mlmodel.short_description = f"aperture_zoo {meta.get('arch', '')}: CIFAR-10 classifier ({precision})"
    mlmodel.input_description[INPUT_NAME] = "N x 3 x 32 x 32 float32 RGB pixels in [0, 1] (normalised inside)"
    mlmodel.output_description[OUTPUT_NAMES[0]] = "N x classes logits"
    mlmodel.output_description[OUTPUT_NAMES[1]] = "N x classes calibrated probabilities"
    path = Path(path)
    with tempfile.TemporaryDirectory(prefix=".aperture_coreml_", dir=path.parent) as tmp:
        staged = Path(tmp) / path.name
        mlmodel.save(str(staged))
        if path.exists():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        os.replace(staged, path)
    return path


@contextlib.contextmanager
def _quiet():
    logger = logging.getLogger("coremltools")
    saved = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(saved)


def read_coreml_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    import coremltools as ct

    spec = ct.utils.load_spec(str(path))
    return dict(spec.description.metadata.userDefined)


def package_weights(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Every constant tensor of the saved package's main function, by name, read back from its weight file."""
    import coremltools as ct
    from coremltools.converters.mil.frontend.milproto.load import load as milproto_load

    spec = ct.utils.load_spec(str(path))
    weights_dir = Path(path) / "Data" / "com.apple.CoreML" / "weights"
    program = milproto_load(spec, specification_version=spec.specificationVersion, file_weights_dir=str(weights_dir))
    out = {}
    for op in program.functions["main"].operations:
        if op.op_type == "const" and op.outputs[0].val is not None and np.ndim(op.outputs[0].val) >= 1:
            out[op.name] = np.asarray(op.outputs[0].val)
    return out


def check_coreml(path: str | os.PathLike[str], model, precision: str) -> list[str]:
    """Spec-level failures of an ``.mlpackage`` (empty when it is right): contract, metadata, weights.

    The weights round trip: every conv/linear weight of ``model`` must be in the package (Core ML folds
    batch norm into the convolutions, so the folded weights are recomputed here in float64 and compared
    within the precision's rounding).
    """
    import coremltools as ct

    from .onnx_export import INPUT_NAME, OUTPUT_NAMES

    try:
        spec = ct.utils.load_spec(str(path))
    except Exception as exc:  # noqa: BLE001 - a damaged package raises many types
        raise ExportError(f"{str(path)!r} is not a Core ML package ({exc}); export it again") from None
    fails = []
    desc = spec.description
    inputs, outputs = [i.name for i in desc.input], [o.name for o in desc.output]
    if inputs != [INPUT_NAME] or outputs != list(OUTPUT_NAMES):
        fails.append(f"inputs {inputs} / outputs {outputs}; the contract is {[INPUT_NAME]} / {list(OUTPUT_NAMES)}")
    else:
        shape = list(desc.input[0].type.multiArrayType.shape)
        if shape[1:] != [3, *model.spec.input_size[1:]]:
            fails.append(f"input shape {shape}, expected N x 3 x {model.spec.input_size[1]} x {model.spec.input_size[2]}")
    meta = dict(desc.metadata.userDefined)
    for key in ("label_names", "weights_sha256", "probabilities", "precision", "input"):
        if key not in meta:
            fails.append(f"metadata has no {key!r}")
    if "calibrator" not in meta and "temperature" not in meta:  # build_metadata writes one of the two
        fails.append("metadata names no calibrator (nor a temperature)")
    if meta.get("precision") not in (None, precision):
        fails.append(f"metadata says precision {meta.get('precision')}, the file is {precision}")
    fails += _weights_round_trip(path, model, precision)
    return fails


def _weights_round_trip(path, model, precision: str) -> list[str]:
    weights = package_weights(path)
    sizes = {}
    for arr in weights.values():
        sizes.setdefault(arr.shape, []).append(arr)
    rtol = 1e-5 if precision == "fp32" else 2e-3
    missing = []
    for name, ref in _folded_weights(model).items():
        found = any(np.allclose(a.astype(np.float64), ref, rtol=rtol, atol=rtol * np.abs(ref).max())
                    for a in sizes.get(ref.shape, []))
        if not found:
            missing.append(name)
    if missing:
        return [f"weights round trip: {len(missing)} weight tensors of the model are not in the package "
                f"within {precision} rounding (first: {missing[0]})"]
    return []


def _folded_weights(model) -> dict[str, np.ndarray]:
    """Conv weights with their batch norm folded in (as Core ML stores them), and the linear weights."""
    out = {}
    modules = list(model.named_modules())
    for (name, mod), (_, nxt) in zip(modules, modules[1:] + [(None, None)]):
        if isinstance(mod, torch.nn.Conv2d):
            w = mod.weight.detach().double().numpy()
            if isinstance(nxt, torch.nn.BatchNorm2d):
                scale = (nxt.weight.detach().double() / torch.sqrt(nxt.running_var.double() + nxt.eps)).numpy()
                w = w * scale.reshape(-1, 1, 1, 1)
            out[name] = w
        elif isinstance(mod, torch.nn.Linear):
            out[name] = mod.weight.detach().double().numpy()
    return out
