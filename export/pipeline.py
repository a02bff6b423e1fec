"""The whole ``aperture export --onnx`` job as one function: export, convert, validate, report.

Kept apart from the CLI so scripts and tests get the same behaviour: every file written is
checked, and validated (unless asked not to) with its report written beside it as
``<stem>.report.json``. A file that fails validation is renamed ``<stem>.FAILED.onnx`` (its report
``<stem>.FAILED.report.json``): nothing is left under the name a user would load.

The set is written whole (``filesets``): exported, converted and validated in a hidden stage folder
inside the output folder, then moved in under the folder's lock, each file together with its report
(an old report or FAILED pair of the same name goes). A killed or failed export leaves no new file
beside an old report, and two exports into one folder never judge each other's files. Every report
records the SHA-256 of the file it judged and of the weights (``provenance``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aperture_zoo.catalog import refuse_published_folder
from aperture_zoo.filesets import move_in, staged
from aperture_zoo.model import ResNet
from aperture_zoo.progress import MessageProgress, SilentProgress, StepProgress

from .compat import check_opset
from .errors import ExportError
from .formats import format_of
from .onnx_export import DEFAULT_OPSET, Exporter, state_dict_sha256, to_onnx
from .quantize import DEFAULT_CALIBRATION_IMAGES, calibration_pixels, to_fp16, to_int8
from .runtime import Provider, check_provider, parse_cuda_options
from .validate import DEFAULT_VAL_IMAGES, ValidationReport, report_path, validate

FAILED_TAG = "FAILED"
_BESIDE = "an export of other weights would sit beside them"


@dataclass
class ExportResult:
    files: list[Path] = field(default_factory=list)          # usable: passed, or not validated
    failed_files: list[Path] = field(default_factory=list)   # failed validation, renamed by failed_path
    reports: list[ValidationReport] = field(default_factory=list)
    report_files: list[Path] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)        # as staged, before validation renamed any

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.reports) and not self.failed_files


def export_run(name: str, run_dir: str | os.PathLike[str], *, provider: Provider = "auto",
               data_dir: str | os.PathLike[str] | None = None, dataset: str | None = None) -> dict[str, Any]:
    """A finished training run's weights as validated ONNX in ``<run_dir>/onnx`` (``train_zoo``'s exporter).

    The weights are read once, through the same path as ``load()``, and their SHA-256 goes into the ONNX.
    ``dataset`` is the one the zoo trained on (its metadata never chooses a folder to read).
    """
    from aperture_zoo.files import WEIGHTS_FILENAME
    from aperture_zoo.pretrained import fetch_weights, model_from

    from aperture_zoo.datasets import dataset_for_weights
    from aperture_zoo.weights import decode_metadata

    loaded = fetch_weights(name, Path(run_dir) / WEIGHTS_FILENAME)
    own = dataset_for_weights(dataset, data_dir, False, decode_metadata(loaded.metadata))  # CIFAR-100 or a folder
    result = export_model(model_from(loaded), Path(run_dir) / "onnx", weights_sha256=loaded.sha256,
                          provider=provider, data_dir=data_dir if own is None else None, max_val_images=1000,
                          dataset=own)
    return {"files": [p.name for p in result.files], "failed_files": [p.name for p in result.failed_files],
            "passed": result.passed, "reports": [r.to_dict() for r in result.reports]}


def failed_path(path: str | os.PathLike[str]) -> Path:
    """Where a file that failed validation goes: ``resnet22.int8.onnx`` -> ``resnet22.int8.FAILED.onnx``
    (``resnet22.xml`` -> ``resnet22.FAILED.xml``, its ``.bin`` moved beside it)."""
    p = Path(path)
    return p.with_name(f"{p.stem}.{FAILED_TAG}{p.suffix}")


def parse_max_val_images(text: str) -> int | None:
    """``--max-val-images``: a positive count, or ``all`` (None) for the whole test set."""
    from .errors import ExportError

    value = text.strip().lower()
    if value in ("all", "full"):
        return None
    if not value.isdigit() or int(value) < 1:
        raise ExportError(f"--max-val-images must be a positive number of test images or 'all', got {text!r}")
    return int(value)


def _as_progress(progress: StepProgress | Callable[[str], None] | None) -> StepProgress:
    if progress is None:
        return SilentProgress()
    if hasattr(progress, "stage") and hasattr(progress, "update"):
        return progress  # type: ignore[return-value]
    return MessageProgress(progress)


def export_model(
    model: ResNet,
    out_dir: str | os.PathLike[str],
    *,
    stem: str | None = None,
    weights_sha256: str | None = None,
    opset: int = DEFAULT_OPSET,
    batch: int | None = None,
    normalize: bool = True,
    exporter: Exporter = "dynamo",
    fp16: bool = False,
    fp16_io: bool = False,
    int8: bool = False,
    data_dir: str | os.PathLike[str] | None = None,
    calibration_images: int = DEFAULT_CALIBRATION_IMAGES,
    provider: Provider = "auto",
    run_validation: bool = True,
    max_val_images: int | None = DEFAULT_VAL_IMAGES,
    progress: StepProgress | Callable[[str], None] | None = None,
    tta: bool = False,
    temperature: float | None = None,
    dataset: Any = None,
    cuda_options: str | dict | None = None,
    stage: Path | None = None,
) -> ExportResult:
    """Write ``<stem>.onnx`` (and ``.fp16.onnx`` / ``.int8.onnx``), validating each one.

    int8 needs ``data_dir``: calibration uses a stratified sample of its training split, and the
    int8 tolerance is judged on its test split. ``fp16_io`` makes the fp16 file take and give
    float16 (its inputs and outputs stay float32 otherwise). Validation uses a stratified
    ``max_val_images`` of the test split (default 2,000; None: all), and each rate in the reports
    carries its standard error. ``tta`` puts flip test-time augmentation in the graph (default stem
    ``<name>.tta``, validated against PyTorch's ``eval --tta`` logits); ``temperature`` (default: the
    model's own) calibrates the ``probabilities`` output. ``dataset`` (an ``aperture_zoo.datasets.Dataset``:
    CIFAR-100 or a folder) takes the place of ``data_dir``: calibration on its training split, validation
    on its test split. ``progress`` gets each step and the images validated so far (an ``StepProgress``),
    or is a plain ``callback(message)`` per step.
    ``cuda_options``: onnxruntime CUDA provider options for validation (``runtime.parse_cuda_options``),
    checked before any work. ``stage``: the stage folder of a larger set (``export_formats``) to write
    into, which its caller moves in; by default the ONNX files are a set of their own.
    """
    options = parse_cuda_options(cuda_options)
    reporter = _as_progress(progress)
    say = reporter.stage
    if dataset is not None and tuple(dataset.classes) != tuple(model.spec.label_names):
        raise ExportError(f"the model's classes ({len(model.spec.label_names)}: {', '.join(model.spec.label_names[:3])}, ...) "
                          f"are not the dataset's ({len(dataset.classes)}: {', '.join(dataset.classes[:3])}, ...); "
                          "validate it on the dataset it was trained on (--dataset)")
    _check_options(fp16=fp16, fp16_io=fp16_io, int8=int8, data_dir=data_dir if dataset is None else "dataset", calibration_images=calibration_images,
                   provider=provider if run_validation else None, max_val_images=max_val_images,
                   opset=opset, exporter=exporter)
    from aperture_zoo.weights import check_finite

    check_finite(model.state_dict(), f"the {model.spec.name} model to export")  # NaN would validate as NaN == NaN
    if int8:  # fail on a bad data dir before spending time on the export
        calibration = calibration_pixels(data_dir, calibration_images,
                                         train=dataset.train if dataset is not None else None)
    else:
        calibration = None
    out = Path(out_dir)
    stem = stem or (f"{model.spec.name}.tta" if tta else model.spec.name)
    args = dict(stem=stem, opset=opset, batch=batch, normalize=normalize, exporter=exporter, fp16=fp16,
                fp16_io=fp16_io, calibration=calibration, weights_sha256=weights_sha256, temperature=temperature,
                tta=tta)
    check = dict(provider=provider, data_dir=data_dir, max_val_images=max_val_images, cuda_options=options,
                 test_split=dataset.test if dataset is not None else None) if run_validation else None
    if stage is not None:
        return _onnx_set(model, stage, out, reporter, check, **args)
    refuse_published_folder(out, weights_sha256 or state_dict_sha256(model), _BESIDE)
    with staged(out) as own_stage:  # nothing reaches ``out`` until the whole set is written and judged
        result = _onnx_set(model, own_stage, out, reporter, check, **args)
        return _move_in(result, own_stage, out)


def _onnx_set(model: ResNet, stage: Path, out: Path, reporter: StepProgress, check: dict[str, Any] | None, *,
              stem: str, opset: int, batch: int | None, normalize: bool, exporter: Exporter, fp16: bool,
              fp16_io: bool, calibration: Any, weights_sha256: str | None, temperature: float | None,
              tta: bool) -> ExportResult:
    """The ONNX files written into ``stage`` and (``check``: validation's options) validated, reports beside."""
    say, sha = reporter.stage, weights_sha256 or state_dict_sha256(model)  # what the files were made from
    result = ExportResult()
    say(f"exporting {model.spec.name}{' with flip TTA' if tta else ''} with the {exporter} exporter (opset {opset})")
    fp32_path = to_onnx(model, stage / f"{stem}.onnx", opset=opset, batch=batch, normalize=normalize,
                        exporter=exporter, weights_sha256=weights_sha256, temperature=temperature, tta=tta)
    result.files.append(fp32_path)
    if fp16:
        say("converting to fp16")
        result.files.append(to_fp16(fp32_path, stage / f"{stem}.fp16.onnx", keep_io_types=not fp16_io))
    if calibration is not None:
        if not normalize:
            import numpy as np

            mean = np.asarray(model.spec.mean, np.float32).reshape(1, -1, 1, 1)
            std = np.asarray(model.spec.std, np.float32).reshape(1, -1, 1, 1)
            calibration = (calibration - mean) / std
        say(f"quantising to int8 (calibrated on {len(calibration)} training images)")
        result.files.append(to_int8(fp32_path, stage / f"{stem}.int8.onnx", calibration))
    result.written = list(result.files)
    if check is not None:
        _validate_files(result, model, reporter, weights_sha256=sha, out=out, **check)
    return result


def _move_in(result: ExportResult, stage: Path, out: Path) -> ExportResult:
    """The staged set into ``out``: each output replaces its old file (every part: an IR's ``.bin``),
    report and FAILED pair together."""
    from aperture_zoo.files import model_file_parts
    from aperture_zoo.provenance import refuse_foreign

    replaces = []
    for path in result.written:  # e.g. resnet22.int8.onnx: the names any earlier export of it left
        aside = failed_path(path)
        replaces += [*(p.name for p in (*model_file_parts(path), *model_file_parts(aside))),
                     report_path(path).name, report_path(aside).name]
    models = [part.name for p in (*result.files, *result.failed_files) for part in model_file_parts(p)]
    refuse_foreign(out, [*models, *(p.name for p in result.report_files), *replaces], "the export", "-o DIR")
    move_in(stage, out, [*models, *(p.name for p in result.report_files)], replaces)
    result.files = [out / p.name for p in result.files]
    result.failed_files = [out / p.name for p in result.failed_files]
    result.report_files = [out / p.name for p in result.report_files]
    return result


def _check_options(*, fp16: bool, fp16_io: bool, int8: bool, data_dir: str | os.PathLike[str] | None,
                   calibration_images: int, provider: Provider | None, max_val_images: int | None,
                   opset: int = DEFAULT_OPSET, exporter: str = "dynamo") -> None:
    """Every option error before any work: an export takes minutes, a typo should not cost them."""
    check_opset(opset, exporter)
    if fp16_io and not fp16:
        raise ExportError("--fp16-io applies to the fp16 file; add --fp16")
    if int8 and calibration_images < 1:
        raise ExportError(f"--calibration-images must be at least 1, got {calibration_images}")
    if max_val_images is not None and max_val_images < 1:
        raise ExportError(f"--max-val-images must be at least 1, got {max_val_images}")
    if provider is not None:  # validating: an unusable provider is an error before the export, not after
        check_provider(provider)
    if int8 and data_dir is None:
        raise ExportError(
            "--int8 needs training images to calibrate on; pass --data-dir pointing at CIFAR-10 "
            "(the folder containing cifar-10-batches-py)"
        )


def record_validation(path: str | os.PathLike[str], report: ValidationReport) -> None:
    """Write into the file's metadata the onnxruntime it was validated with (``validated_runtimes``),
    so that a copy found elsewhere still says what it is known to run right on."""
    import json

    import onnx
    import onnxruntime as ort

    from .onnx_export import save_checked, set_metadata

    comp = report.comparisons[-1] if report.comparisons else None
    entry = {"runtime": "onnxruntime", "version": ort.__version__, "provider": report.provider}
    if comp is not None:
        entry.update(inputs=comp.inputs, images=comp.num_images, agreement=round(comp.agreement, 2),
                     max_abs_diff=float(f"{comp.max_abs_diff:.3g}"))
    proto = onnx.load(str(path))
    set_metadata(proto, {"validated_runtimes": json.dumps([entry])})
    save_checked(proto, path)


def _validate_files(result: ExportResult, model: ResNet, reporter: StepProgress, *, provider: Provider,
                    data_dir: str | os.PathLike[str] | None, max_val_images: int | None, weights_sha256: str,
                    out: Path, test_split: Any = None, cuda_options: dict[str, str] | None = None,
                    reference_cache: dict[Any, Any] | None = None) -> None:
    """Validate each staged file of any format, writing its report beside it (naming the file's place in
    ``out``); a failed file (with every part: an IR's ``.bin``) is renamed by ``failed_path``."""
    from aperture_zoo.files import model_file_parts, model_sha256

    written, result.files = result.files, []
    reference_cache = {} if reference_cache is None else reference_cache  # PyTorch's test-set logits, once for all files
    for path in written:
        reporter.stage(f"validating {path.name} against PyTorch")
        if format_of(path).runtime is None:  # Core ML: checked at the spec level, reported as not run
            from .spec_check import spec_report

            report = spec_report(path, model, weights_sha256)
        else:
            report = _validate_or_fail(path, model, provider=provider, data_dir=data_dir, max_images=max_val_images,
                                       test_split=test_split, progress=reporter.update, weights_sha256=weights_sha256,
                                       reference_cache=reference_cache, cuda_options=cuda_options)
        if report.passed:
            if path.suffix == ".onnx":
                record_validation(path, report)
                report.onnx_sha256 = model_sha256(path)  # the file as shipped: its metadata now names the run above
            report.onnx_file = str(out / path.name)
            result.files.append(path)
        else:
            aside = failed_path(path)
            for part, moved in zip(model_file_parts(path), model_file_parts(aside)):
                os.replace(part, moved)
            report.renamed_from, report.onnx_file = path.name, str(out / aside.name)
            result.failed_files.append(aside)
        result.reports.append(report)
        result.report_files.append(report.write_json(report_path(path.parent / Path(report.onnx_file).name)))


def _validate_or_fail(path: Path, model: ResNet, **kwargs: Any) -> ValidationReport:
    """``validate``, where a runtime that cannot run the file (a crash inside it, not a wrong option)
    makes a failed report: the file is then moved aside like any other that fails."""
    try:
        return validate(path, model, **kwargs)
    except ExportError:
        raise
    except Exception as exc:  # noqa: BLE001 - each runtime raises its own types
        from aperture_zoo.files import model_sha256

        from .validate import tolerance_for

        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        report = ValidationReport(onnx_file=str(path), arch=model.spec.name, precision="unknown",
                                  provider="the runtime failed", tolerance=tolerance_for("fp32", "cpu"),
                                  onnx_sha256=model_sha256(path), weights_sha256=kwargs.get("weights_sha256"))
        report.failures.append(f"{path.name}: the runtime could not run it ({type(exc).__name__}: {first})")
        return report


def export_formats(
    model: ResNet,
    out_dir: str | os.PathLike[str],
    precisions: dict[str, list[str]],
    *,
    data_dir: str | os.PathLike[str] | None = None,
    dataset: Any = None,
    calibration_images: int = DEFAULT_CALIBRATION_IMAGES,
    run_validation: bool = True,
    max_val_images: int | None = DEFAULT_VAL_IMAGES,
    progress: StepProgress | Callable[[str], None] | None = None,
    stem: str | None = None,
    weights_sha256: str | None = None,
    tta: bool = False,
    temperature: float | None = None,
    provider: Provider = "auto",
    **onnx_options: Any,
) -> ExportResult:
    """Every format of ``precisions`` (format -> precisions, ``formats.precisions_for``), each file validated.

    ONNX goes through ``export_model`` (``onnx_options``: opset, batch, normalize, exporter, fp16_io,
    cuda_options); the other formats are built from the same module (or, OpenVINO, from that ONNX file),
    calibrated on the same training images for int8, and validated by the same ``validate``. Every
    format's files are one set (``filesets``): staged together, moved in together, or none of them.
    """
    from .format_export import export_file
    from .formats import file_name, require

    others = {f: p for f, p in precisions.items() if f != "onnx"}
    for fmt in others:
        require(fmt)  # a missing tool chain is one line before any work
    if others and (not onnx_options.get("normalize", True) or onnx_options.get("batch") is not None):
        raise ExportError("--no-normalize and a fixed --batch apply to ONNX files only; export the other formats "
                          "without them")
    reporter = _as_progress(progress)
    onnx_precisions = precisions.get("onnx", ["fp32"])
    stem = stem or (f"{model.spec.name}.tta" if tta else model.spec.name)
    need_int8 = any("int8" in p for p in others.values())
    if need_int8 and data_dir is None and dataset is None:
        raise ExportError("int8 files need training images to calibrate on; pass --data-dir pointing at CIFAR-10")
    if "onnx" in precisions:  # every option error before the set's stage (or its folder) exists
        _check_options(fp16="fp16" in onnx_precisions, fp16_io=bool(onnx_options.get("fp16_io")),
                       int8="int8" in onnx_precisions, data_dir=data_dir if dataset is None else "dataset",
                       calibration_images=calibration_images, provider=provider if run_validation else None,
                       max_val_images=max_val_images, opset=onnx_options.get("opset", DEFAULT_OPSET),
                       exporter=onnx_options.get("exporter", "dynamo"))
        parse_cuda_options(onnx_options.get("cuda_options"))
    out, sha = Path(out_dir), weights_sha256 or state_dict_sha256(model)
    refuse_published_folder(out, sha, _BESIDE)
    with staged(out) as stage:  # one set, every format: nothing reaches ``out`` until all are written and judged
        result = ExportResult()
        if "onnx" in precisions:
            result = export_model(
                model, out, stem=stem, weights_sha256=weights_sha256, fp16="fp16" in onnx_precisions,
                int8="int8" in onnx_precisions, data_dir=data_dir, calibration_images=calibration_images,
                provider=provider, run_validation=run_validation, max_val_images=max_val_images, progress=reporter,
                tta=tta, temperature=temperature, dataset=dataset, stage=stage, **onnx_options)
        calibration = calibration_pixels(data_dir, calibration_images, train=dataset.train if dataset is not None
                                         else None) if need_int8 else None
        onnx_fp32 = stage / f"{stem}.onnx"  # validated just above, if it passed (a failed one was renamed)
        if "openvino" in others and not onnx_fp32.is_file():
            reporter.stage("exporting the ONNX graph OpenVINO converts")
            onnx_fp32 = to_onnx(model, stage / f".{stem}.openvino-source.onnx", weights_sha256=weights_sha256,
                                temperature=temperature, tta=tta)
        fresh = ExportResult()  # the other formats' files, judged below
        for fmt, wanted in others.items():
            for precision in wanted:
                reporter.stage(f"writing the {fmt} {precision} file")
                path = export_file(model, fmt, precision, stage / file_name(stem, fmt, precision),
                                   weights_sha256=weights_sha256, temperature=temperature, tta=tta,
                                   calibration=calibration if precision == "int8" else None, onnx_fp32=onnx_fp32)
                fresh.files.append(path)
        if run_validation:
            _validate_files(fresh, model, reporter, provider="cpu", data_dir=data_dir, max_val_images=max_val_images,
                            test_split=dataset.test if dataset is not None else None, weights_sha256=sha, out=out)
        for part in ("files", "failed_files", "reports", "report_files"):
            getattr(result, part).extend(getattr(fresh, part))
        return _move_in(result, stage, out)
