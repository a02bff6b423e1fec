"""`aperture export`, `aperture predict` and `aperture bench`: thin layers over aperture_zoo.export."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from . import app
from .common import console, err_console, model_for_command, print_json, user_errors


def _load_model(name: str, weights: Path | None, pretrained: bool, random_init: bool) -> tuple[Any, str | None]:
    """The model to export and the SHA-256 of its weights file (None for random weights)."""
    model, _, sha256 = model_for_command(name, weights, pretrained, random_init)
    return model, sha256


def _say(status: Any, message: str) -> None:
    """The spinner's text on a terminal; a timestamped line when piped, so logs show progress too."""
    if err_console.is_terminal:
        status.update(message)
    else:
        import time

        err_console.print(f"{time.strftime('%H:%M:%S')} {message}", highlight=False, soft_wrap=True)


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
    err_console.print(f"using CIFAR-10 found in {default_data_dir()}")
    return default_data_dir()


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
    return (f"test images: {sample}; agreement {c.agreement:.2f} ± {c.agreement_se:.2f} %, ONNX top-1 "
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
    for col in ("inputs", "images", "max |Δ|", "mean |Δ|", "agree %", "ONNX top-1", "torch top-1"):
        table.add_column(col, justify="left" if col == "inputs" else "right")
    for c in report.comparisons:
        table.add_row(
            c.inputs, str(c.num_images), f"{c.max_abs_diff:.2e}", f"{c.mean_abs_diff:.2e}", f"{c.agreement:.2f}",
            "—" if c.onnx_top1 is None else f"{c.onnx_top1:.2f}", "—" if c.torch_top1 is None else f"{c.torch_top1:.2f}",
        )
    return table


@app.command("export")
def export_cmd(
    name: str = typer.Argument(..., help="Model name, e.g. resnet22"),
    onnx: bool = typer.Option(False, "--onnx", help="Export to ONNX (the one format supported)."),
    weights: Path | None = typer.Option(None, "--weights", help="A model.safetensors to export."),
    pretrained: bool = typer.Option(False, "--pretrained", help="Export the published weights."),
    random_init: bool = typer.Option(False, "--random-init", help="Export untrained weights (seed 0)."),
    out: Path = typer.Option(Path("."), "--out", "-o", help="Folder for <name>.onnx and its report."),
    opset: int = typer.Option(18, "--opset", help="ONNX opset."),
    batch: str = typer.Option("dynamic", "--batch", help="'dynamic' or a fixed batch size."),
    fp16: bool = typer.Option(False, "--fp16", help="Also write <name>.fp16.onnx (float32 I/O unless --fp16-io)."),
    fp16_io: bool = typer.Option(False, "--fp16-io", help="Make the fp16 file take and give float16 (default: float32 I/O)."),
    int8: bool = typer.Option(False, "--int8", help="Also write <name>.int8.onnx (static QDQ; needs --data-dir)."),
    provider: str = typer.Option("auto", "--provider", help="onnxruntime provider for validation: auto|cuda|cpu."),
    cuda_options: str = typer.Option("", "--cuda-options", help="onnxruntime CUDA provider options, e.g. cudnn_conv_algo_search=HEURISTIC,prefer_nhwc=1,enable_cuda_graph=1; "
                                   "unset keys keep onnxruntime's defaults (not yet chosen by measurement). Checked always, used only on CUDA."),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="CIFAR-10 folder: int8 calibration and test-set validation."),
    normalize: bool = typer.Option(True, "--normalize/--no-normalize", help="Put CIFAR-10 normalisation in the graph (inputs are pixels in [0, 1]); --no-normalize exports the bare network."),
    exporter: str = typer.Option("dynamo", "--exporter", help="dynamo (torch.export, default) or legacy (TorchScript fallback)."),
    validate: bool = typer.Option(True, "--validate/--no-validate", help="Compare every file against PyTorch."),
    calibration_images: int = typer.Option(512, "--calibration-images", help="Training images for int8 calibration (stratified)."),
    max_val_images: str = typer.Option("2000", "--max-val-images", help="Test images to validate on: a stratified sample "
                                       "(default 2000, each rate shown with its standard error), or 'all' for all 10,000."),
    json_out: bool = typer.Option(False, "--json", help="Print the reports as JSON."),
) -> None:
    """Export to a checked, self-describing ONNX file (plus fp16/int8), validated against PyTorch.

    A file that fails validation is renamed <stem>.FAILED.onnx and the command exits 1.
    """
    with user_errors():
        from aperture_zoo.export.errors import ExportError
        from aperture_zoo.export.pipeline import export_model, parse_max_val_images
        from aperture_zoo.progress import ConsoleProgress
        from aperture_zoo.export.runtime import PROVIDERS, parse_cuda_options

        options = parse_cuda_options(cuda_options)
        if not onnx:
            raise ExportError("ONNX is the only export format; add --onnx")
        if provider not in PROVIDERS:
            raise ExportError(f"--provider must be one of {', '.join(PROVIDERS)}, got {provider!r}")
        val_images = parse_max_val_images(max_val_images)
        model, sha = _load_model(name, weights, pretrained, random_init)
        data = _auto_data_dir(data_dir)
        with ConsoleProgress(err_console) as progress:
            result = export_model(
                model, out, weights_sha256=sha, opset=opset, batch=_parse_batch(batch), normalize=normalize,
                exporter=exporter, fp16=fp16, fp16_io=fp16_io, int8=int8, data_dir=data, calibration_images=calibration_images,  # type: ignore[arg-type]
                provider=provider, run_validation=validate, max_val_images=val_images,  # type: ignore[arg-type]
                progress=progress, cuda_options=options,
            )
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
                err_console.print(f"[bold red]failed:[/] {failure}", highlight=False, soft_wrap=True)
        for path in result.files:
            console.print(f"wrote {path}", highlight=False, soft_wrap=True)
        for path in result.report_files:
            console.print(f"wrote {path}", highlight=False, soft_wrap=True)
        for path in result.failed_files:
            err_console.print(f"[bold red]failed validation:[/] kept as {path} so that it is not taken for a good "
                              "file; do not use it", highlight=False, soft_wrap=True)
        if not validate:
            err_console.print("[yellow]validation skipped (--no-validate)[/]")
        elif data is None:
            err_console.print("[yellow]no CIFAR-10 found: validated on random inputs only (pass --data-dir)[/]")
    if not result.passed:
        raise typer.Exit(code=1)


@app.command("predict")
def predict_cmd(
    images: list[Path] = typer.Argument(..., help="Image files (any size and mode; resized to 32x32)."),
    onnx: Path = typer.Option(..., "--onnx", help="An ONNX file written by `aperture export`."),
    top_k: int = typer.Option(3, "--top-k", help="Classes to show per image (>= 1)."),
    provider: str = typer.Option("auto", "--provider", help="auto|cuda|cpu"),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Classify images with an exported ONNX file (onnxruntime only, no PyTorch)."""
    with user_errors():
        from aperture_zoo.export.predict import OnnxClassifier

        clf = OnnxClassifier(onnx, provider=provider)  # type: ignore[arg-type]
        predictions = clf.predict(images, top_k=top_k)
    for p in predictions:
        for notice in p.notices:
            err_console.print(f"[yellow]notice:[/] {p.source}: {notice}", highlight=False, soft_wrap=True)
    if json_out:
        print_json([p.to_dict() for p in predictions])
        return
    for p in predictions:
        ranked = ", ".join(f"{label} {prob:.1%}" for label, prob in p.top)
        console.print(f"{p.source}: [bold]{p.label}[/]  ({ranked})", highlight=False)


@app.command("bench")
def bench_cmd(
    name: str = typer.Argument(..., help="Model name, e.g. resnet22"),
    weights: Path | None = typer.Option(None, "--weights", help="A model.safetensors (speed does not depend on it)."),
    pretrained: bool = typer.Option(False, "--pretrained", help="Use the published weights."),
    batch_sizes: str = typer.Option("1,256", "--batch-sizes", help="Comma-separated batch sizes."),
    device: str = typer.Option("auto", "--device", help="cpu, cuda, or auto (CPU, plus CUDA when present)."),
    variants: str = typer.Option("all", "--variants", help="Comma-separated subset of torch-eager, "
                                 "torch-channels-last, torch-compile, ort-fp32, ort-fp16, ort-int8; or 'all'."),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="CIFAR-10 for int8 calibration (else noise)."),
    exporter: str = typer.Option("dynamo", "--exporter", help="dynamo or legacy."),
    min_seconds: float = typer.Option(2.0, "--min-seconds", help="Timing window per measurement."),
    cuda_options: str = typer.Option("", "--cuda-options", help="onnxruntime CUDA provider options, e.g. cudnn_conv_algo_search=HEURISTIC,prefer_nhwc=1,enable_cuda_graph=1; "
                                   "unset keys keep onnxruntime's defaults (not yet chosen by measurement). Checked always, used only on CUDA."),
    io_binding: bool = typer.Option(False, "--io-binding", help="Time onnxruntime with input and output in device "
                                    "buffers (no host copies); implied by enable_cuda_graph=1."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Images/s for torch eager, channels_last, torch.compile and onnxruntime fp32/fp16/int8."""
    with user_errors():
        from aperture_zoo.export.bench import format_table, parse_batch_sizes, parse_variants, run_benchmark
        from aperture_zoo.export.runtime import parse_cuda_options

        sizes, chosen = parse_batch_sizes(batch_sizes), parse_variants(variants)
        options = parse_cuda_options(cuda_options)
        model, _ = _load_model(name, weights, pretrained, random_init=weights is None and not pretrained)
        with err_console.status("benchmarking") as status:
            rows = run_benchmark(model, batch_sizes=sizes, device=device, variants=chosen,
                                 data_dir=_auto_data_dir(data_dir), exporter=exporter,
                                 min_seconds=min_seconds, progress=lambda m: _say(status, m),
                                 cuda_options=options, io_binding=io_binding)
        if options and not any(r.device == "cuda" and r.variant.startswith("ort-") for r in rows):
            err_console.print("--cuda-options are valid but unused: no onnxruntime row ran on CUDA here",
                              highlight=False, soft_wrap=True)
    if json_out:
        from aperture_zoo.export.bench import environment

        print_json({"environment": environment(), "rows": [r.to_dict() for r in rows]})  # figures say where
        return
    weights_note = "random weights" if weights is None and not pretrained else "trained weights"
    console.print(format_table(rows, title=f"{name} ({weights_note}): images/s"), highlight=False, markup=False, soft_wrap=True)
