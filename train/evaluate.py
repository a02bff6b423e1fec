"""Test-set evaluation: top-1, loss, per-class accuracy, the confusion matrix and calibration.

Used by the training loop every epoch (sums reduced across DDP ranks) and by ``aperture eval``.
Counts are accumulated as device tensors and read back once, so evaluation does not stall the GPU.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aperture_zoo.errors import ApertureError

from .augment import normalise
from aperture_zoo.device import autocast_dtype, device_name
from aperture_zoo.model import evaluating, on_device
from aperture_zoo.terminal import fragment


class EvalError(ApertureError, ValueError):
    """An evaluation that would give a meaningless number; the message says what to change."""


@dataclass
class EvalResult:
    top1: float                      # percent
    loss: float                      # mean cross-entropy
    num_images: int
    confusion: list[list[int]]       # rows: true class, columns: predicted class
    classes: tuple[str, ...]
    images_per_s: float = 0.0
    device: str = "cpu"
    tta: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def per_class_top1(self) -> dict[str, float | None]:
        out = {}
        for name, row in zip(self.classes, self.confusion):
            total = sum(row)
            out[name] = 100.0 * row[self.classes.index(name)] / total if total else None  # JSON has no NaN
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "top1": self.top1, "loss": self.loss, "num_images": self.num_images,
            "per_class_top1": self.per_class_top1, "confusion": self.confusion,
            "classes": list(self.classes), "images_per_s": self.images_per_s,
            "device": self.device, "tta": self.tta, **self.extra,
        }


def predict_logits(model: nn.Module, x: Tensor, tta: bool = False) -> Tensor:
    """Logits, optionally averaged with the mirrored image's (flip test-time augmentation)."""
    logits = model(x)
    if tta:
        logits = 0.5 * (logits + model(x.flip(3)))
    return logits


@torch.no_grad()
def evaluate_sums(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    mean: Tensor,
    std: Tensor,
    num_classes: int,
    batch_size: int = 1000,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    tta: bool = False,
    on_batch: Callable[[int], None] | None = None,
    logits_out: list[tuple[Tensor, Tensor | None]] | None = None,
    mirror: bool = False,
) -> Tensor:
    """A flat device tensor [loss_sum, count, confusion (K*K)] for uint8 ``images``.

    Sums, not means, so DDP ranks can all-reduce their shards into the exact global result.
    ``on_batch(n)`` is called after each batch of ``n`` images (progress display). ``logits_out``
    collects each batch's (plain, mirrored or None) float32 CPU logits, for calibration figures;
    ``mirror`` collects the mirrored logits there without ``tta`` making them count in the sums.
    """
    with evaluating(model):  # the caller's mode (a run in training, a frozen BatchNorm) is given back
        return _sums(model, images, labels, mean, std, num_classes, batch_size, autocast_dtype, channels_last, tta,
                     on_batch, logits_out, mirror)


def _sums(model: nn.Module, images: Tensor, labels: Tensor, mean: Tensor, std: Tensor, num_classes: int,
          batch_size: int, autocast_dtype: torch.dtype | None, channels_last: bool, tta: bool,
          on_batch: Callable[[int], None] | None, logits_out: list[tuple[Tensor, Tensor | None]] | None,
          mirror: bool) -> Tensor:
    dev = images.device
    loss_sum = torch.zeros((), device=dev, dtype=torch.float64)
    confusion = torch.zeros(num_classes * num_classes, device=dev, dtype=torch.float64)
    for start in range(0, images.shape[0], batch_size):
        x = normalise(images[start:start + batch_size], mean, std, channels_last)
        y = labels[start:start + batch_size]
        with torch.autocast(dev.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            if logits_out is None:
                logits = predict_logits(model, x, tta)
            else:
                plain = model(x)
                mirrored = model(x.flip(3)) if tta or mirror else None
                logits_out.append((plain.float().cpu(), None if mirrored is None else mirrored.float().cpu()))
                logits = 0.5 * (plain + mirrored) if tta and mirrored is not None else plain
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
        pred = logits.argmax(1)
        confusion += torch.bincount(y * num_classes + pred, minlength=num_classes * num_classes).double()
        if on_batch is not None:
            on_batch(int(y.shape[0]))
    count = torch.tensor([float(images.shape[0])], device=dev, dtype=torch.float64)
    return torch.cat([loss_sum.view(1), count, confusion])


def result_from_sums(sums: Tensor, classes: tuple[str, ...], **kw: Any) -> EvalResult:
    values = sums.double().cpu()
    k = len(classes)
    count = int(values[1].item())
    confusion = values[2:].view(k, k).round().long()
    correct = int(confusion.diag().sum().item())
    return EvalResult(
        top1=100.0 * correct / max(count, 1), loss=float(values[0].item()) / max(count, 1),
        num_images=count, confusion=confusion.tolist(), classes=classes, **kw,
    )


def check_eval_options(batch_size: int, subset: int | None = None, write_temperature: Path | None = None) -> None:
    """Options checked before any model or data is loaded."""
    if batch_size < 1:
        raise EvalError(f"--batch-size must be at least 1, got {batch_size}")
    if subset is not None and subset < 1:
        raise EvalError(f"--subset must be at least 1 test image, got {subset}")
    if write_temperature is not None and (write_temperature.exists() or write_temperature.is_symlink()):
        what = "is a link (to a missing file)" if not write_temperature.exists() else "already exists"
        raise EvalError(f"--write-temperature {str(write_temperature)!r} {what}; name a new file (the "
                        "calibrated weights never replace one)")


def evaluate(
    model: nn.Module,
    split: Any,
    batch_size: int = 1000,
    device: str | torch.device | None = None,
    tta: bool = False,
    precision: str = "auto",
    on_batch: Callable[[int], None] | None = None,
    calibration: bool = True,
    mirror: bool = False,
) -> EvalResult:
    """Evaluate ``model`` on a ``aperture_zoo.data.Split`` (uint8 images), timing the forward passes.

    The model's spec supplies the normalisation, so a model is always evaluated the way it was
    trained. ``precision="auto"`` uses bf16 autocast on CUDA and fp32 on CPU. ``calibration`` adds
    ECE/NLL/Brier uncalibrated, with one temperature and with the calibrator (see
    ``calibrate.logit_figures``) to ``extra``. ``mirror``
    (with ``calibration``) also runs the mirrored images, so that an evaluation without TTA reports
    top-1 with and without it and the flip-averaged calibration in one pass: what the cards show.
    """
    check_eval_options(batch_size)
    spec = model.spec
    if spec.num_classes != len(split.classes):
        raise EvalError(
            f"the model has a {spec.num_classes}-class head but the data has {len(split.classes)} classes "
            f"({', '.join(split.classes[:3])}, ...); evaluate it on data with the same classes, or load "
            f"weights trained for them"
        )
    if tuple(split.classes) != tuple(spec.label_names):  # same count, other classes or order: a wrong number
        diff = next(i for i, (a, b) in enumerate(zip(spec.label_names, split.classes)) if a != b)
        raise EvalError(
            f"the weights were trained for other classes than the data has (class {diff}: {spec.label_names[diff]!r} "
            f"in the weights, {split.classes[diff]!r} in the data); evaluate them on the dataset they were trained on"
        )
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    channels_last = dev.type == "cuda"
    model = on_device(model, dev)  # the caller's model stays on its device
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    images = torch.as_tensor(split.images).to(dev)
    labels = torch.as_tensor(split.labels).to(dev)
    mean = torch.tensor(spec.mean, device=dev)
    std = torch.tensor(spec.std, device=dev)
    dtype = autocast_dtype(precision, dev)
    if dev.type == "cuda":  # warm-up so the timing excludes cuDNN autotuning
        evaluate_sums(model, images[:batch_size], labels[:batch_size], mean, std, spec.num_classes,
                      batch_size, dtype, channels_last, tta)
        torch.cuda.synchronize(dev)
    collected: list[tuple[Tensor, Tensor | None]] = []
    start = time.perf_counter()
    sums = evaluate_sums(model, images, labels, mean, std, spec.num_classes, batch_size, dtype,
                         channels_last, tta, on_batch, logits_out=collected if calibration else None,
                         mirror=mirror and calibration)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    seconds = time.perf_counter() - start
    if not bool(torch.isfinite(sums).all()):  # the training loop has its own divergence handling
        raise EvalError("the model gives non-finite outputs (NaN or infinity) on the test images: its weights "
                        "are damaged or training diverged; use an earlier checkpoint or other weights")
    classes = tuple(split.classes) if len(split.classes) == spec.num_classes else spec.label_names
    result = result_from_sums(sums, classes, images_per_s=len(split) / seconds, device=device_name(dev), tta=tta)
    if calibration:
        plain = torch.cat([p for p, _ in collected]).numpy()
        mirrored = torch.cat([m for _, m in collected]).numpy() if tta or mirror else None  # type: ignore[misc]
        from .calibrate import logit_figures

        result.extra.update(logit_figures(plain, mirrored, split.labels, model, tta=tta))
    return result


def split_logits(model: nn.Module, images: Tensor, labels: Tensor, mean: Tensor, std: Tensor,
                 batch_size: int = 1000) -> tuple[Any, Any, Any]:
    """(plain, mirrored, labels) as numpy: the logits a run's calibrators are fitted on."""
    collected: list[tuple[Tensor, Tensor | None]] = []
    evaluate_sums(model, images, labels, mean, std, model.spec.num_classes, batch_size, logits_out=collected,
                  mirror=True)
    mirrored = torch.cat([m for _, m in collected if m is not None])
    return torch.cat([p for p, _ in collected]).numpy(), mirrored.numpy(), labels.cpu().numpy()


def temperature_to_write(result: EvalResult) -> tuple[float, dict[str, Any], str]:
    """The temperature and the calibrator (``calibration.fit_calibrator``) this evaluation fitted on all
    its images, and how to describe where, for a weights copy.

    Weights calibrated on their own validation split have it applied, not refitted: there is nothing
    new to write. Too few images fit none.
    """
    from .calibrate import VAL_FITTED

    e = result.extra
    if e.get("temperature_fitted_on") == VAL_FITTED or e.get("calibrator_fitted_on") == VAL_FITTED:
        raise EvalError("these weights already carry a calibrator fitted on their validation split (images held out "
                        "of training), which eval applies rather than refits; there is nothing new to write")
    if e.get("temperature") is None or "ece_calibrated" not in e or "calibrator" not in e:
        raise EvalError(f"no calibrator was fitted ({e.get('calibrator_fitted_on', 'no calibration measured')}); "
                        "evaluate on more images to write one")
    if isinstance(e.get("test_set"), dict):  # eval --unseen: the user's folder, in its own words
        from aperture_zoo.unseen import test_set_line

        return float(e["temperature"]), e["calibrator"], f"{test_set_line(e['test_set'], result.num_images)}, by aperture eval"
    return float(e["temperature"]), e["calibrator"], f"{result.num_images} test images, by aperture eval"


def format_confusion(result: EvalResult) -> str:
    """The confusion matrix as aligned text (rows true, columns predicted)."""
    short = [fragment(c)[:5] for c in result.classes]  # outside text: one line each
    width = max(5, len(str(max(max(r) for r in result.confusion))))
    lines = ["true\\pred " + " ".join(f"{s:>{width}}" for s in short)]
    for name, row in zip(short, result.confusion):
        lines.append(f"{name:>9} " + " ".join(f"{v:>{width}}" for v in row))
    return "\n".join(lines)


def format_robustness(extra: dict[str, Any]) -> list[str]:
    """The calibration, TTA and corruption figures of an evaluation, as printed lines."""
    from .calibrate import calibration_lines

    e, lines = extra, calibration_lines(extra)
    if "top1_by_tta" in e:
        lines.append(f"top-1 without TTA {e['top1_by_tta']['none']:.2f}%, with flip TTA {e['top1_by_tta']['flip']:.2f}%")
    c = e.get("corruptions")
    if c:
        for corruption, by in c["top1"].items():
            lines.append(f"  {corruption:<17} " + "  ".join(f"{s}: {v:6.2f}%" for s, v in by.items()))
        sample = f"a stratified {c['num_images']:,} images" if c["stratified_sample"] else f"{c['num_images']:,} images"
        lines.append(f"corruptions ({sample} each): mean top-1 {c['mean']:.2f}%, worst {c['worst']} "
                     f"({c['worst_mean']:.2f}% over its severities)")
    return lines


def write_eval_report(result: EvalResult, out_dir: str | os.PathLike[str], model_name: str,
                      weights: str | os.PathLike[str] | None, weights_file: str | os.PathLike[str]) -> dict[str, Any]:
    """``eval.json`` (strict JSON: no NaN) and ``confusion.png`` in ``out_dir``; returns the report.

    The weights are named by their SHA-256, so a report always says which file it measured.
    """
    import hashlib
    import json

    from aperture_zoo.catalog import refuse_other_weights_folder
    from aperture_zoo.files import CONFUSION_FILENAME, EVAL_FILENAME, RELIABILITY_FILENAME, atomic_write_text
    from aperture_zoo.files import file_sha256

    from .plots import plot_confusion, plot_reliability

    out = Path(out_dir)
    sha = file_sha256(weights_file)
    refuse_other_weights_folder(out, sha, "an eval.json and figures of other weights would replace or sit beside "
                                "its own")
    from aperture_zoo.provenance import refuse_foreign

    figures = [CONFUSION_FILENAME, *([RELIABILITY_FILENAME] if "reliability" in result.extra else [])]
    refuse_foreign(out, [EVAL_FILENAME, *figures], "the evaluation", "aperture eval ... --out DIR")
    from .dataset_run import public_ref

    # a file by its name only: eval.json travels (cards, Hub folders) and the path on this machine is nobody's business
    report = {"model": model_name, "weights": public_ref(str(weights)) if weights else "pretrained",
              "weights_sha256": sha,
              "evaluated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **result.to_dict()}
    text = json.dumps(report, indent=2, allow_nan=False) + "\n"
    made_from = {"weights_sha256": sha, "eval_sha256": hashlib.sha256(text.encode()).hexdigest()}
    atomic_write_text(out / EVAL_FILENAME, text)
    ts = result.extra.get("test_set")  # eval --unseen: the figures say which images they show
    n = f"{result.num_images} images" + (f" of {ts['dataset']}, declared unseen" if isinstance(ts, dict) else "")
    plot_confusion(result.confusion, result.classes, out / CONFUSION_FILENAME,
                   title=f"{model_name}: top-1 {result.top1:.2f}% ({n})", made_from=made_from)
    if "reliability" in result.extra:
        e = result.extra
        title = (f"{model_name}: ECE {100 * e['ece']:.2f}% -> {100 * e['ece_calibrated']:.2f}% ({n})"
                 if "ece_calibrated" in e else f"{model_name}: ECE {100 * e['ece']:.2f}%, no calibrator ({n})")
        plot_reliability(e["reliability"], out / RELIABILITY_FILENAME, title=title, made_from=made_from)
    return report
