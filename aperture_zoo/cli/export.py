"""`aperture export`, `aperture predict` and `aperture bench`: thin layers over aperture_zoo.export."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from . import app
from aperture_zoo.terminal import fragment

from .common import (MODEL_HELP, WEIGHTS_HELP, console, err_console, model_for_command, names_weights, print_json, safe,
                     say_error, user_errors)

_CUDA_OPTIONS_HELP = (
    "onnxruntime CUDA provider options, key=value joined by commas: cudnn_conv_algo_search (EXHAUSTIVE, "
    "HEURISTIC or DEFAULT), prefer_nhwc (0 or 1), enable_cuda_graph (0 or 1); unset keys keep onnxruntime's "
    "defaults (not yet chosen by measurement). Checked always, used only on CUDA."
)


def _load_model(name: str, weights: str | None, pretrained: bool, random_init: bool) -> tuple[Any, str | None]:
    """The model to export and the SHA-256 of its weights file (None for random weights)."""
    model, _, sha256 = model_for_command(name, weights, pretrained, random_init)
    return model, sha256


def _say(status: Any, message: str) -> None:
    """The spinner's text on a terminal; a timestamped line when piped, so logs show progress too."""
    if err_console.is_terminal:
        status.update(safe(message))
    else:
        import time

        err_console.print(f"{time.strftime('%H:%M:%S')} {safe(message)}", highlight=False, soft_wrap=True)


def _auto_data_dir(data_dir: Path | None) -> Path | None:
    """``--data-dir``, else the default data folder when CIFAR-10 is already there."""
    from aperture_zoo.data import DataError, default_data_dir, find_batches_dir

    if data_dir is not None:
        find_batches_dir(data_dir)  # a wrong path is an error, not a silent skip
        return data_dir
    try:
        find_batches_dir(default_data_dir())
    except DataError:
        return None
    err_console.print(f"using CIFAR-10 found in {safe(default_data_dir())}", highlight=False)
    return default_data_dir()


def _own_dataset(model: Any, dataset: str | None, data_dir: Path | None, needed: bool = True,
                 validate: bool = True) -> Any:
    """The dataset named by --dataset or the built-in one the weights name, unless it is plain CIFAR-10 (None).

    Weights trained on a folder without --dataset: ``False`` when the data is not ``needed`` (random
    inputs only, said), else the one-line refusal (a folder named in weights metadata is never read).
    """
    from aperture_zoo.datasets import DatasetNotGivenError, dataset_for_weights
    from aperture_zoo.weights import decode_metadata

    try:
        return dataset_for_weights(dataset, data_dir, False, decode_metadata(getattr(model, "weights_metadata", {})),
                                   say=lambda m: err_console.print(safe(m), highlight=False))
    except DatasetNotGivenError as exc:
        if needed:
            raise
        if validate:  # with --no-validate nothing is validated: that is said once, at the end
            err_console.print(f"[yellow]validating on random inputs only:[/] {safe(exc)}", highlight=False, soft_wrap=True)
        return False


def _parse_batch(batch: str) -> int | None:
    from aperture_zoo.export.errors import ExportError

    if batch == "dynamic":
        return None
    if not batch.isdigit() or int(batch) < 1:
        raise ExportError(f"--batch must be 'dynamic' or a positive integer, got {batch!r}")
    return int(batch)


def _test_set_line(report: Any) -> str | None:
    """How many test images the figures rest on, and how precise they are (one standard error)."""
    if not report.test_images_total:
        return None
    c = report.comparisons[-1]
    n, total = c.num_images, report.test_images_total
    sample = f"all {n:,}" if n >= total else f"a stratified {n:,} of {total:,} (--max-val-images all for every one)"
    drop = "" if c.top1_drop is None else f", top-1 drop {c.top1_drop:.2f} ± {c.top1_drop_se:.2f} points"
    return (f"test images: {sample}; agreement {c.agreement:.2f} ± {c.agreement_se:.2f} %, file top-1 "
            f"{c.onnx_top1:.2f} ± {c.onnx_top1_se:.2f} %{drop} (± one binomial standard error)")


def _report_table(report: Any) -> Any:
    from rich.table import Table

    status = "[green]PASS[/]" if report.passed else "[bold red]FAIL[/]"
    tol = report.tolerance
    limits = ", ".join(
        s for s in (
            f"max |Δ| ≤ {tol.max_abs:g}" if tol.max_abs is not None else "",
            f"agreement ≥ {tol.min_agreement:g} %" if tol.min_agreement is not None else "",
            f"top-1 drop ≤ {tol.max_top1_drop:g} pt" if tol.max_top1_drop is not None else "",
        ) if s
    )
    table = Table(title=f"{Path(report.onnx_file).name}: {report.precision} on {report.provider} — {status}",
                  caption=f"tolerance: {limits}; reference: PyTorch fp32 on {report.reference_device}")
    for col in ("inputs", "images", "max |Δ|", "mean |Δ|", "agree %", "file top-1", "torch top-1"):
        table.add_column(col, justify="left" if col == "inputs" else "right")
    for c in report.comparisons:
        table.add_row(
            c.inputs, str(c.num_images), f"{c.max_abs_diff:.2e}", f"{c.mean_abs_diff:.2e}", f"{c.agreement:.2f}",
            "—" if c.onnx_top1 is None else f"{c.onnx_top1:.2f}", "—" if c.torch_top1 is None else f"{c.torch_top1:.2f}",
        )
    return table


@app.command("export")
def export_cmd(
    name: str = typer.Argument(..., help=MODEL_HELP),
    onnx: bool = typer.Option(False, "--onnx", help="Export to ONNX (shorthand for --format onnx)."),
    formats: str = typer.Option("", "--format", help="onnx, openvino, executorch, tflite, coreml; several: "
                                "--format onnx,openvino. Each format but ONNX needs its extra: pip install "
                                "'aperture_zoo\\[openvino]' (executorch, litert, coreml; formats: all)."),
    weights: str | None = typer.Option(None, "--weights", help=WEIGHTS_HELP),
    pretrained: bool = typer.Option(False, "--pretrained", help="Export the published weights."),
    random_init: bool = typer.Option(False, "--random-init", help="Export untrained weights (seed 0)."),
    out: Path = typer.Option(Path("."), "--out", "-o", help="Folder for <name>.onnx and its report."),
    opset: int = typer.Option(18, "--opset", help="ONNX opset."),
    batch: str = typer.Option("dynamic", "--batch", help="'dynamic' or a fixed batch size."),
    fp16: bool = typer.Option(False, "--fp16", help="Also write fp16 files: ONNX <name>.fp16.onnx (float32 I/O "
                              "unless --fp16-io) and Core ML."),
    bf16: bool = typer.Option(False, "--bf16", help="Also write <name>.bf16.xml (OpenVINO: fp32 weights, bf16 "
                              "inference hint)."),
    fp16_io: bool = typer.Option(False, "--fp16-io", help="Make the fp16 file take and give float16 (default: float32 I/O)."),
    int8: bool = typer.Option(False, "--int8", help="Also write int8 files of each chosen format that has one "
                              "(ONNX static QDQ, OpenVINO NNCF, ExecuTorch XNNPACK, LiteRT); needs --data-dir."),
    provider: str = typer.Option("auto", "--provider", help="onnxruntime provider for validation: auto|cuda|cpu."),
    cuda_options: str = typer.Option("", "--cuda-options", help=_CUDA_OPTIONS_HELP),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="CIFAR-10 folder: int8 calibration and test-set validation."),
    dataset: str | None = typer.Option(None, "--dataset", help="cifar10, cifar100 or an image folder: int8 calibration "
                                       "on its training images, validation on its test images (default: the one the "
                                       "weights were trained on)."),
    normalize: bool = typer.Option(True, "--normalize/--no-normalize", help="Put CIFAR-10 normalisation in the graph (inputs are pixels in [0, 1]); --no-normalize exports the bare network."),
    exporter: str = typer.Option("dynamo", "--exporter", help="dynamo (torch.export, default) or legacy (TorchScript fallback)."),
    validate: bool = typer.Option(True, "--validate/--no-validate", help="Compare every file against PyTorch."),
    calibration_images: int = typer.Option(512, "--calibration-images", help="Training images for int8 calibration (stratified)."),
    max_val_images: str = typer.Option("2000", "--max-val-images", help="Test images to validate on: a stratified sample "
                                       "(default 2000, each rate shown with its standard error), or 'all' for all 10,000."),
    tta: str = typer.Option("none", "--tta", help="flip: average the image and its mirror inside the graph "
                            "(writes <name>.tta.onnx, same input and outputs; validated against `eval --tta`); none."),
    json_out: bool = typer.Option(False, "--json", help="Print the reports as JSON."),
) -> None:
    """Export to checked, self-describing files (ONNX, OpenVINO, ExecuTorch, LiteRT, Core ML; plus their
    fp16/bf16/int8), each validated against PyTorch in its own runtime (Core ML: at the spec level).

    Outputs: logits, and probabilities (the weights' calibrator applied to the logits, in the graph).

    A file that fails validation is renamed <stem>.FAILED.onnx and the command exits 1.
    """
    from aperture_zoo.registry import CIFAR10_CLASSES

    with user_errors():
        from aperture_zoo.export.errors import ExportError
        from aperture_zoo.export.pipeline import export_formats, parse_max_val_images
        from aperture_zoo.progress import ConsoleProgress
        from aperture_zoo.export.runtime import PROVIDERS, parse_cuda_options
        from aperture_zoo.predict import check_tta

        from aperture_zoo.export.formats import parse_formats, precisions_for, require

        flip = check_tta(tta)
        options = parse_cuda_options(cuda_options)
        chosen = parse_formats(formats, onnx)
        precisions = precisions_for(chosen, fp16=fp16, bf16=bf16, int8=int8)
        for fmt in chosen:
            require(fmt)  # a missing extra: one line with the pip command, before any work
        if provider not in PROVIDERS:
            raise ExportError(f"--provider must be one of {', '.join(PROVIDERS)}, got {provider!r}")
        val_images = parse_max_val_images(max_val_images)
        model, sha = _load_model(name, weights, pretrained, random_init)
        own = _own_dataset(model, dataset, data_dir, needed=int8, validate=validate)  # int8 calibrates on training images
        data = _auto_data_dir(data_dir) if own is None else None
        own = own or None
        with ConsoleProgress(err_console) as progress:
            result = export_formats(
                model, out, precisions, weights_sha256=sha, opset=opset, batch=_parse_batch(batch), normalize=normalize,
                exporter=exporter, fp16_io=fp16_io, data_dir=data, calibration_images=calibration_images,
                provider=provider, run_validation=validate, max_val_images=val_images,  # type: ignore[arg-type]
                progress=progress, tta=flip, dataset=own, cuda_options=options,
            )
        if model.calibrator is None and model.temperature is None:
            err_console.print("[yellow]no calibrator is known for these weights: the probabilities output is the "
                              "uncalibrated softmax[/]", highlight=False, soft_wrap=True)
        elif model.calibration_notice:
            err_console.print(f"[yellow]{safe(model.calibration_notice)}[/]", highlight=False, soft_wrap=True)
        if options and not any(r.provider == "CUDAExecutionProvider" for r in result.reports):
            err_console.print("--cuda-options are valid but unused: no file was validated on the CUDA provider",
                              highlight=False, soft_wrap=True)
    if json_out:
        print_json([r.to_dict() for r in result.reports] if validate else [str(f) for f in result.files])
    else:
        for report in result.reports:
            console.print(_report_table(report))
            if _test_set_line(report):
                console.print(_test_set_line(report), highlight=False)  # wraps at the terminal width
            for failure in report.failures:
                err_console.print(f"[bold red]failed:[/] {safe(failure)}", highlight=False, soft_wrap=True)
        for path in result.files:
            console.print(f"wrote {safe(path)}", highlight=False, soft_wrap=True)
        for path in result.report_files:
            console.print(f"wrote {safe(path)}", highlight=False, soft_wrap=True)
        for path in result.failed_files:
            err_console.print(f"[bold red]failed validation:[/] kept as {safe(path)} so that it is not taken for a good "
                              "file; do not use it", highlight=False, soft_wrap=True)
        if not validate:
            err_console.print("[yellow]validation skipped (--no-validate): nothing was validated, not even on random "
                              "inputs[/]", highlight=False, soft_wrap=True)
        elif data is None and own is None and model.spec.label_names == CIFAR10_CLASSES:
            err_console.print("[yellow]no CIFAR-10 found: validated on random inputs only (pass --data-dir)[/]")
    if not result.passed:
        raise typer.Exit(code=1)


@app.command("predict")
def predict_cmd(
    images: list[Path] = typer.Argument(..., help="Image files (any size and mode; resized to 32x32)."),
    model: str | None = typer.Option(None, "--model", "-m", help=MODEL_HELP + " PyTorch path; default: the "
                              "architecture --weights records, else the published resnet22."),
    weights: str | None = typer.Option(None, "--weights", "-w", help=WEIGHTS_HELP + " PyTorch path."),
    onnx: Path | None = typer.Option(None, "--onnx", "--file", help="A file written by `aperture export`: .onnx "
                                     "(onnxruntime, no PyTorch), .xml (OpenVINO), .pte (ExecuTorch), .tflite (LiteRT); "
                                     "the file decides calibration and TTA."),
    runtime: str | None = typer.Option(None, "--runtime", help="onnxruntime, openvino, executorch or tflite "
                                       "(default: the file's own; openvino also runs .onnx files)."),
    tta: str | None = typer.Option(None, "--tta", help="flip: average with the mirrored image (PyTorch path); "
                                   "an ONNX file holds its own (export --tta flip)."),
    top_k: int = typer.Option(3, "--top-k", help="Classes to show per image (>= 1)."),
    provider: str = typer.Option("auto", "--provider", help="auto|cuda|cpu (ONNX only)"),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Calibrated class probabilities for image files: the published resnet22 by default, or an ONNX file.

    Every readable image is answered; files that cannot be read are listed on stderr. Exit code: 0
    all answered, 1 some answered and some not, 2 none answered (or a bad --onnx file or model).
    """
    with user_errors():
        if runtime is not None and onnx is None:
            from aperture_zoo.export.errors import ExportError

            raise ExportError(f"--runtime {runtime} runs an exported file; pass it with --file "
                              f"(`aperture export {model} --pretrained --format ...` writes one)")
        if onnx is not None:
            if weights is not None or model is not None:
                from aperture_zoo.export.errors import ExportError

                raise ExportError("--onnx FILE is the model (its own weights, classes and calibration); drop --model "
                                  "and --weights, or drop --onnx for the PyTorch path")
            rows, failures, what = _predict_onnx(images, onnx, tta, top_k, provider, runtime)
        elif provider != "auto":
            from aperture_zoo.export.errors import ExportError

            raise ExportError(f"--provider {provider} applies to --onnx files; the PyTorch path (no --onnx) runs on "
                              "the CPU: drop --provider, or pass --onnx FILE")
        else:
            # --weights alone: the file is the model (its own architecture), never resnet22 by default
            name, source = (weights, None) if model is None and weights is not None else (model or "resnet22", weights)
            rows, failures, what = _predict_torch(images, name, source, tta, top_k)
    from aperture_zoo.images import notice_summary

    err_console.print(safe(what), highlight=False, soft_wrap=True)
    summary = notice_summary([row["notices"] for row in rows])  # once per run; --json keeps them per image
    if summary is not None:
        err_console.print(f"[yellow]notice:[/] {safe(summary)}", highlight=False, soft_wrap=True)
    if json_out:
        print_json(rows + [{"image": path, "error": str(exc)} for path, exc in failures])
    else:
        for row in rows:
            ranked = ", ".join(f"{safe(fragment(t['label']))} {t['probability']:.1%}" for t in row["top"])
            console.print(f"{safe(fragment(row['image']))}: [bold]{safe(fragment(row['top'][0]['label']))}[/]  ({ranked})",
                          highlight=False, soft_wrap=True)
    for _, exc in failures:
        say_error(exc, prefix="[bold red]failed:[/]")
    if failures:
        say_error(f"{len(failures)} of {len(images)} images could not be read (listed above); "
                  f"{len(rows)} answered", prefix="[bold red]error:[/]")
        raise typer.Exit(code=1 if rows else 2)


def _predict_onnx(images: list[Path], onnx: Path, tta: str | None, top_k: int,
                  provider: str, runtime: str | None = None) -> tuple[list[dict], list, str]:
    """Torch-free for ONNX, OpenVINO and LiteRT files (ExecuTorch's runtime takes torch tensors)."""
    from aperture_zoo.export.errors import ExportError
    from aperture_zoo.export.predict import OnnxClassifier

    if tta is not None:
        raise ExportError("--tta applies to the PyTorch path; an ONNX file holds its own TTA "
                          "(`aperture export NAME --pretrained --onnx --tta flip`)")
    clf = OnnxClassifier(onnx, provider=provider, runtime=runtime)  # type: ignore[arg-type]
    predictions, failures = clf.predict_files(images, top_k=top_k)
    rows = [p.to_dict() for p in predictions]
    notice = clf.describe()  # said once, not per image
    for row in rows:
        row["notices"] = [n for n in row["notices"] if n != notice]
    ran_by = "" if onnx.suffix == ".onnx" and runtime in (None, "onnxruntime") else f" ({clf.providers[0]})"
    return rows, failures, f"{onnx.name}{ran_by}: {notice}"


def _predict_torch(images: list[Path], name: str, weights: str | None, tta: str | None,
                   top_k: int) -> tuple[list[dict], list, str]:
    import warnings

    from aperture_zoo.catalog import find_weights
    from aperture_zoo.predict import check_tta, classify, describe_probabilities

    flip = check_tta(tta)
    model, _, sha = model_for_command(name, weights, pretrained=weights is None)
    with warnings.catch_warnings():  # the line below says it once, for the whole run
        warnings.simplefilter("ignore", UserWarning)
        rows, failures = classify(model, images, top_k=top_k, tta=flip)
    record = None if names_weights(name) else find_weights(name)
    tag = record.tag if record is not None and record.sha256 == sha else weights or name  # yours: as you named it
    return rows, failures, f"{tag}: {describe_probabilities(model, flip)}" + ("; flip test-time augmentation" if flip else "")


@app.command("bench")
def bench_cmd(
    name: str = typer.Argument(..., help=MODEL_HELP),
    weights: str | None = typer.Option(None, "--weights", help=WEIGHTS_HELP + " Speed does not depend on it."),
    pretrained: bool = typer.Option(False, "--pretrained", help="Use the published weights."),
    batch_sizes: str = typer.Option("1,256", "--batch-sizes", help="Comma-separated batch sizes."),
    device: str = typer.Option("auto", "--device", help="cpu, cuda, or auto (CPU, plus CUDA when present)."),
    variants: str = typer.Option("all", "--variants", help="Comma-separated subset of torch-eager, "
                                 "torch-channels-last, torch-compile, ort-fp32, ort-fp16, ort-int8, ov-fp32, ov-bf16, "
                                 "ov-int8, ov-onnx-int8 (OpenVINO on the ONNX int8 file), et-fp32, et-int8 "
                                 "(ExecuTorch), litert-fp32, litert-int8; or 'all' (the formats' rows where their "
                                 "extras are installed); "
                                 "plus browser-wasm, browser-webgpu (the demo page in headless Chromium, batch 1, "
                                 "fp32 and int8, beside ort-fp32/ort-int8)."),
    threads: int | None = typer.Option(None, "--threads", help="onnxruntime intra-op threads, and the page's "
                                       "WebAssembly threads (default: each runtime's own; with browser-* variants, 1 "
                                       "on both sides, so they compare).", min=1),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="CIFAR-10 for int8 calibration (else noise)."),
    exporter: str = typer.Option("dynamo", "--exporter", help="dynamo or legacy."),
    min_seconds: float = typer.Option(2.0, "--min-seconds", help="Timing window per measurement."),
    cuda_options: str = typer.Option("", "--cuda-options", help=_CUDA_OPTIONS_HELP),
    io_binding: bool = typer.Option(False, "--io-binding", help="Time onnxruntime with input and output in device "
                                    "buffers (no host copies); implied by enable_cuda_graph=1."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Images/s for torch eager, channels_last, torch.compile, onnxruntime fp32/fp16/int8, and each other
    format in its runtime (OpenVINO, ExecuTorch, LiteRT), all from the same model in one run."""
    with user_errors():
        from aperture_zoo.export.bench import format_table, parse_batch_sizes, parse_variants, run_benchmark
        from aperture_zoo.export.runtime import parse_cuda_options

        sizes = parse_batch_sizes(batch_sizes)
        from aperture_zoo.browser import split_variants

        names, in_browser = split_variants([v.strip() for v in variants.split(",") if v.strip()])
        if in_browser:
            from aperture_zoo.browser import add_native_ratios, browser_rows, check_browser_ready

            check_browser_ready()  # no Chromium/Playwright: one line saying how to install, before any work
            threads = threads or 1
            names = names or ["ort-fp32", "ort-int8"]
        chosen = parse_variants(",".join(names))
        options = parse_cuda_options(cuda_options)
        random_init = weights is None and not pretrained and not names_weights(name)
        model, _ = _load_model(name, weights, pretrained, random_init=random_init)
        data = _auto_data_dir(data_dir)
        with err_console.status("benchmarking") as status:
            rows = run_benchmark(model, batch_sizes=sizes, device=device, variants=chosen, data_dir=data,
                                 exporter=exporter, min_seconds=min_seconds, threads=threads,
                                 progress=lambda m: _say(status, m), cuda_options=options,
                                 io_binding=io_binding)
            if in_browser:
                rows = add_native_ratios(rows + browser_rows(model, in_browser, threads=threads, data_dir=data,
                                                             exporter=exporter, progress=lambda m: _say(status, m)))
        if options and not any(r.device == "cuda" and r.variant.startswith("ort-") for r in rows):
            err_console.print("--cuda-options are valid but unused: no onnxruntime row ran on CUDA here",
                              highlight=False, soft_wrap=True)
    if json_out:
        from aperture_zoo.export.bench import environment

        print_json({"environment": environment(), "rows": [r.to_dict() for r in rows]})  # figures say where
        return
    weights_note = "random weights" if random_init else "trained weights"
    console.print(format_table(rows, title=f"{name} ({weights_note}): images/s"), highlight=False, markup=False,
                  soft_wrap=True)

