"""Prove an exported file equals the PyTorch model it came from, or say exactly where it does not.

The reference is the fp32 PyTorch model with the same input contract as the file (pixels in
[0, 1], normalised by the spec's mean/std in code of this module's own, not the wrapper the graph
was exported from), with TF32 off on CUDA so the reference itself is fp32.
Checks, per the precision of the file:

=========  ===========================================================================
fp32 CPU   max |Δlogit| <= 1e-4 and 100 % top-1 agreement (random inputs and test set)
fp32 CUDA  max |Δlogit| <= 1e-3
fp16       max |Δlogit| <= 5e-2 and >= 99.5 % top-1 agreement
bf16       max |Δlogit| <= 0.4 (fp16's, times 2**3 for 3 fewer mantissa bits) and >= 99.5 % agreement
int8       >= 99 % top-1 agreement and <= 0.5 point top-1 drop on the test set
=========  ===========================================================================

Top-1 agreement (and accuracy) is judged on the test set when a data set is given, on the random
inputs only when it is not: uniform noise puts a trained classifier near its decision boundaries,
where an argmax flip measures a near-tie, not an error (the logit bound still applies there).
int8 is judged on real images only: its activation ranges are calibrated on images, so uniform
noise falls outside them by design; the noise figures are still reported.

The test-set figures come from a stratified sample of ``DEFAULT_VAL_IMAGES`` (2,000: 200 per class)
unless asked otherwise (``max_images=None``: all 10,000), a fifth of the work of the full set. Each
rate carries its binomial standard error: at 2,000 images an agreement near 99.5 % is known to
about ±0.17 points, a 94 % top-1 to ±0.5, and the paired ONNX-vs-PyTorch top-1 drop, which the int8
gate reads, to about ±0.1–0.2 (only images on which the two disagree add to it) — fine enough
for tolerances of 99–99.5 % agreement and a 0.5 point drop.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aperture_zoo.calibrators import Calibrator, from_metadata
from aperture_zoo.files import model_sha256
from aperture_zoo.model import ResNet, evaluating, on_device
from aperture_zoo.provenance import other_weights
from aperture_zoo.weights import decode_metadata

from .errors import ExportError
from .formats import format_of
from .onnx_export import INPUT_NAME, state_dict_sha256
from .reports import (BF16_MAX_ABS, Comparison, Tolerance, ValidationReport, finite_json, report_path,  # noqa: F401
                      tolerance_for)
from .runtime import Provider, session_device

RANDOM_BATCH_SIZES: tuple[int, ...] = (1, 7, 64)
# A --fp16-io file's float32 calibrator reads its float16 logits, but hands its probabilities out as
# float16 too (rounded by up to 2.5e-4 below 1): the check allows for that rounding, no more.
CALIBRATOR_MAX_DIFF_FP16_LOGITS = 1e-3
DEFAULT_VAL_IMAGES = 2000  # stratified test images per validation; None means all of them

ProgressFn = Callable[[int, int], None]  # (images done, images in this validation)


def binomial_se(successes: int, n: int) -> float:
    """One standard error of the rate ``successes / n``, in percentage points.

    Agresti–Coull adjusted (two successes and two failures added), so that 100 % agreement on a
    sample does not claim certainty: 2,000 of 2,000 still has a standard error of 0.07 points.
    """
    p = (successes + 2) / (n + 4)
    return 100 * math.sqrt(p * (1 - p) / (n + 4))


def paired_difference_se(gained: int, lost: int, n: int) -> float:
    """Standard error (points) of a difference of two rates measured on the same ``n`` images.

    ``gained``/``lost``: images only the first/second model gets right; the images both get right
    or both get wrong cancel, which is why a paired drop is known far better than either rate.
    """
    d = (gained - lost) / n
    return 100 * math.sqrt(max((gained + lost) / n - d * d, 0.0) / n)


@contextlib.contextmanager
def _fp32_reference() -> Iterator[None]:
    """Disable TF32 for the duration (restored after), so the CUDA reference is true fp32."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _torch_logits(reference: torch.nn.Module, pixels: np.ndarray, device: str, batch: int = 256,
                  tick: Callable[[int], None] | None = None) -> np.ndarray:
    out = []
    with torch.inference_mode(), _fp32_reference():
        for i in range(0, len(pixels), batch):
            x = torch.from_numpy(pixels[i : i + batch]).to(device)
            out.append(reference(x).float().cpu().numpy())
            if tick:
                tick(len(x))
    return np.concatenate(out)


def _onnx_logits(session, pixels: np.ndarray, feed_batch: int | None, transform,
                 tick: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """(logits, probabilities or None) in chunks; a fixed-batch file gets its last chunk padded."""
    step = feed_batch or 256
    out, probs = [], []
    for i in range(0, len(pixels), step):
        chunk = pixels[i : i + step]
        n = len(chunk)
        if feed_batch and n < feed_batch:
            chunk = np.concatenate([chunk, np.zeros((feed_batch - n, *chunk.shape[1:]), chunk.dtype)])
        result = session.run(None, {INPUT_NAME: transform(chunk)})
        out.append(result[0][:n].astype(np.float32))
        if len(result) > 1:
            probs.append(result[1][:n].astype(np.float32))
        if tick:
            tick(n)
    return np.concatenate(out), (np.concatenate(probs) if probs else None)


def _prob_check(comp: Comparison, onnx_probs: np.ndarray | None, torch_logits: np.ndarray,
                calibrator: Calibrator, onnx_logits: np.ndarray | None = None) -> None:
    """Record how far the file's ``probabilities`` are from the numpy calibrator applied to the
    PyTorch logits, and (``onnx_logits``) to the file's own logits: the graph's calibrator nodes
    against the reference map, whatever the precision of the network before them."""
    if onnx_probs is not None:
        probs = onnx_probs.astype(np.float64)
        comp.max_prob_diff = float(np.abs(probs - calibrator.apply(torch_logits)).max())
        if onnx_logits is not None:
            comp.max_calibrator_diff = float(np.abs(probs - calibrator.apply(onnx_logits)).max())


def compare(onnx_logits: np.ndarray, torch_logits: np.ndarray, inputs: str,
            labels: np.ndarray | None = None) -> Comparison:
    diff = np.abs(onnx_logits.astype(np.float64) - torch_logits.astype(np.float64))
    o_top, t_top = onnx_logits.argmax(1), torch_logits.argmax(1)
    n = len(diff)
    agree = int((o_top == t_top).sum())
    comp = Comparison(
        inputs=inputs, num_images=n, max_abs_diff=float(diff.max()), mean_abs_diff=float(diff.mean()),
        agreement=100 * agree / n, agreement_se=binomial_se(agree, n),
    )
    if labels is not None:
        o_right, t_right = o_top == labels, t_top == labels
        comp.onnx_top1 = float(o_right.mean() * 100)
        comp.torch_top1 = float(t_right.mean() * 100)
        comp.onnx_top1_se = binomial_se(int(o_right.sum()), n)
        comp.top1_drop_se = paired_difference_se(int((t_right & ~o_right).sum()), int((o_right & ~t_right).sum()), n)
    return comp


def _judge(comp: Comparison, tol: Tolerance, label: str, *, logits: bool = True, agreement: bool = True) -> list[str]:
    fails = []
    if not (np.isfinite(comp.max_abs_diff) and np.isfinite(comp.mean_abs_diff)):  # NaN compares False: never a pass
        fails.append(f"{label} on {comp.inputs}: non-finite logits (NaN or infinity); the weights or the graph are damaged")
    if logits and tol.max_abs is not None and comp.max_abs_diff > tol.max_abs:
        fails.append(f"{label} on {comp.inputs}: max |Δlogit| {comp.max_abs_diff:.3g} > {tol.max_abs:g}")
    # the calibrator's moderate slopes keep |Δprobability| within the logit bound
    if logits and tol.max_abs is not None and comp.max_prob_diff is not None and comp.max_prob_diff > tol.max_abs:
        fails.append(f"{label} on {comp.inputs}: max |Δprobability| {comp.max_prob_diff:.3g} > {tol.max_abs:g}")
    # the graph's calibrator nodes stay float32 in every precision: they must be the numpy map
    if comp.max_calibrator_diff is not None and not comp.max_calibrator_diff <= tol.calibrator_max_diff:
        fails.append(f"{label} on {comp.inputs}: the probabilities output differs from the calibrator applied to "
                     f"the file's logits by {comp.max_calibrator_diff:.3g} > {tol.calibrator_max_diff:g}; export it again")
    if agreement and tol.min_agreement is not None and comp.agreement < tol.min_agreement:
        fails.append(f"{label} on {comp.inputs}: top-1 agreement {comp.agreement:.2f} % < {tol.min_agreement:g} %")
    if agreement and tol.max_top1_drop is not None and comp.top1_drop is not None and comp.top1_drop > tol.max_top1_drop:
        fails.append(
            f"{label} on {comp.inputs}: top-1 {comp.onnx_top1:.2f} % vs PyTorch {comp.torch_top1:.2f} % "
            f"(drop {comp.top1_drop:.2f} > {tol.max_top1_drop:g} points)"
        )
    return fails


def validate(
    onnx_path: str | os.PathLike[str],
    model: ResNet,
    *,
    provider: Provider = "auto",
    data_dir: str | os.PathLike[str] | None = None,
    max_images: int | None = DEFAULT_VAL_IMAGES,
    batch_sizes: Sequence[int] = RANDOM_BATCH_SIZES,
    seed: int = 0,
    progress: ProgressFn | None = None,
    reference_cache: dict[Any, np.ndarray] | None = None,
    test_split: Any = None,
    cuda_options: dict[str, str] | None = None,
    weights_sha256: str | None = None,
) -> ValidationReport:
    """Compare ``onnx_path`` with ``model`` (fp32 PyTorch) and judge it by the precision's tolerance.

    ``data_dir`` adds the CIFAR-10 test set: a stratified sample of at most ``max_images`` (None:
    all); without it only random inputs are compared, which an int8 file cannot be judged on.
    ``progress(done, total)`` is called as test images go through ONNX and PyTorch (each image
    counts twice). ``reference_cache``, shared between calls for one model, computes the PyTorch
    logits of the test images once for all the files exported from it. ``test_split`` (a
    ``data.Split``: a folder's or CIFAR-100's test images) is used instead of CIFAR-10's.
    ``weights_sha256``: of the file ``model`` was loaded from (default: of its state dict); a file
    exported from other weights fails, and the report records both hashes (``provenance``).
    """
    from . import sessions  # looked up at call time: a test puts a fake runtime in its place

    if test_split is not None:
        data_dir = data_dir if data_dir is not None else "dataset"
    if format_of(onnx_path).runtime is None:
        raise ExportError(f"{str(onnx_path)!r} cannot run on this system, so it cannot be compared with PyTorch; "
                          "spec_check.spec_report checks it at the spec level")
    judged = model_sha256(onnx_path)
    session = sessions.open_session(onnx_path, provider, cuda_options=cuda_options)
    raw = session.get_modelmeta().custom_metadata_map  # the format's own store, as ONNX metadata strings
    meta = decode_metadata(raw)
    precision = meta.get("precision", "fp32")
    device = session_device(session)
    tol = tolerance_for(precision, device)
    if session.get_outputs()[0].type == "tensor(float16)":
        tol = replace(tol, calibrator_max_diff=CALIBRATOR_MAX_DIFF_FP16_LOGITS)
    if precision == "int8" and data_dir is None:
        raise ExportError(
            "an int8 file can only be validated on real images (its ranges are calibrated on them); "
            "pass --data-dir with CIFAR-10, or --no-validate"
        )
    ref_device = "cuda" if device == "cuda" and torch.cuda.is_available() else "cpu"
    fixed = meta.get("input", {}).get("shape", ["N"])[0]
    tta = meta.get("tta", "none") == "flip"  # a TTA file is compared with PyTorch's `eval --tta` logits
    calibrator = from_metadata(meta, repr(str(onnx_path))) or Calibrator("temperature", 1.0)
    report = ValidationReport(
        onnx_file=str(onnx_path), arch=meta.get("arch", model.spec.name), precision=precision,
        provider=session.get_providers()[0], tolerance=tol, reference_device=ref_device,
        onnx_sha256=judged, weights_sha256=weights_sha256 or state_dict_sha256(model),
    )
    stale = other_weights(onnx_path, raw, report.weights_sha256, weights_sha256 is not None)
    report.failures += [stale] if stale else []  # no file vouches for another's weights
    with evaluating(model):  # the caller's model keeps its mode (and its device: on_device copies)
        _validate_pair(
            _Pair(session, _NormaliseThenNetwork(on_device(model, ref_device), tta=tta).eval(), ref_device,
                  _input_transform(session, meta, model), fixed if isinstance(fixed, int) else None, calibrator),
            report, model, tol, f"{precision}/{device}", batch_sizes, seed, data_dir, max_images, progress,
            reference_cache, test_split)
    if model_sha256(onnx_path) != judged:
        report.failures.append(f"{Path(onnx_path).name} changed while it was validated (another writer?); export it again")
    return report


def _validate_pair(pair: _Pair, report: ValidationReport, model: ResNet, tol: Any, label: str,
                   batch_sizes: Sequence[int], seed: int, data_dir: Any, max_images: int | None,
                   progress: ProgressFn | None, reference_cache: dict[Any, np.ndarray] | None,
                   test_split: Any) -> ValidationReport:
    pooled = _compare_random(pair, report, label, [pair.fixed] if pair.fixed else list(batch_sizes),
                             model.spec.input_size, seed)
    if pooled is not None:
        gated = tol.random_inputs_gated
        report.failures += _judge(pooled, tol, label, logits=gated, agreement=gated and data_dir is None)
    if data_dir is not None:
        comp = _compare_test_set(pair, report, data_dir, max_images, seed, progress, reference_cache, test_split)
        report.failures += _judge(comp, tol, label)
    return report


class _NormaliseThenNetwork(torch.nn.Module):
    """``model((pixels - mean) / std)``, written apart from the export wrapper on purpose: a wrong
    normalisation in that wrapper is then in the file but not in the reference, and fails."""

    def __init__(self, model: ResNet, tta: bool = False) -> None:
        super().__init__()
        self.model, self.tta = model, tta
        self.register_buffer("mean", torch.tensor(model.spec.mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(model.spec.std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = (pixels - self.mean) / self.std
        logits = self.model(x)
        return 0.5 * (logits + self.model(x.flip(-1))) if self.tta else logits  # `eval --tta`: image and mirror


@dataclass
class _Pair:
    """An onnxruntime session and the fp32 PyTorch reference it is compared with."""

    session: Any
    reference: torch.nn.Module
    ref_device: str
    transform: Callable[[np.ndarray], np.ndarray]  # pixels in [0, 1] -> what the file takes
    fixed: int | None                              # the file's fixed batch size, if it has one
    calibrator: Calibrator                         # of the file's probabilities output


def _input_transform(session: Any, meta: dict[str, Any], model: ResNet) -> Callable[[np.ndarray], np.ndarray]:
    """Pixels in [0, 1] as the file takes them: its input dtype, and normalised unless the graph does it."""
    # fp16 files exported with fp16 I/O take float16 inputs; the reference still sees float32.
    in_dtype = np.float16 if session.get_inputs()[0].type == "tensor(float16)" else np.float32
    if meta.get("normalize_in_graph", True):
        return lambda x: x.astype(in_dtype, copy=False)
    mean = np.asarray(model.spec.mean, np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(model.spec.std, np.float32).reshape(1, -1, 1, 1)
    return lambda x: ((x - mean) / std).astype(in_dtype)


def _compare_random(pair: _Pair, report: ValidationReport, label: str, sizes: Sequence[int],
                    input_size: Sequence[int], seed: int) -> Comparison | None:
    """Uniform-noise batches of each size; adds a comparison per batch and the pooled one, returned."""
    rng = np.random.default_rng(seed)
    random_o, random_t, random_p = [], [], []
    for n in sizes:
        pixels = rng.random((n, *input_size), dtype=np.float32)
        outputs = pair.session.run(None, {INPUT_NAME: pair.transform(pixels)})
        o = outputs[0].astype(np.float32)
        t = _torch_logits(pair.reference, pixels, pair.ref_device)
        if o.shape != t.shape:
            report.failures.append(f"{label}: output shape {o.shape} at batch {n}, PyTorch gives {t.shape}")
            continue
        report.comparisons.append(compare(o, t, f"random, batch {n}"))
        _prob_check(report.comparisons[-1], outputs[1] if len(outputs) > 1 else None, t, pair.calibrator, o)
        random_o.append(o)
        random_t.append(t)
        if len(outputs) > 1:
            random_p.append(outputs[1])
    if not random_o:
        return None
    pooled = compare(np.concatenate(random_o), np.concatenate(random_t), "random, all")
    _prob_check(pooled, np.concatenate(random_p) if random_p else None, np.concatenate(random_t), pair.calibrator,
                np.concatenate(random_o))
    report.comparisons.append(pooled)
    return pooled


def _compare_test_set(pair: _Pair, report: ValidationReport, data_dir: str | os.PathLike[str],
                      max_images: int | None, seed: int, progress: ProgressFn | None,
                      reference_cache: dict[Any, np.ndarray] | None, test_split: Any = None) -> Comparison:
    """A stratified sample of the test set, with labels; the PyTorch side cached per model."""
    from aperture_zoo.data import load_split, subset

    full = test_split if test_split is not None else load_split("test", data_dir)
    report.test_images_total = len(full)
    test = subset(full, max_images if max_images is not None and max_images < len(full) else None, seed)
    pixels = test.images.astype(np.float32) / 255.0
    key = (str(data_dir), len(test), seed, pair.ref_device, getattr(pair.reference, "tta", False))
    cached = reference_cache.get(key) if reference_cache is not None else None
    total = len(test) * (1 if cached is not None else 2)
    done = [0]

    def tick(n: int) -> None:
        done[0] += n
        if progress:
            progress(done[0], total)

    o, probs = _onnx_logits(pair.session, pixels, pair.fixed, pair.transform, tick)
    t = cached if cached is not None else _torch_logits(pair.reference, pixels, pair.ref_device, tick=tick)
    if reference_cache is not None:
        reference_cache[key] = t
    comp = compare(o, t, "CIFAR-10 test" if test_split is None else "test images", test.labels)
    _prob_check(comp, probs, t, pair.calibrator, o)
    report.comparisons.append(comp)
    return comp
