"""`aperture list` and `aperture info`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from . import app
from aperture_zoo.terminal import fragment

from .common import (MODEL_HELP, WEIGHTS_HELP, console, err_console, names_weights, open_for_command, print_json,
                     print_whole, safe, user_errors)


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


@app.command("list")
def list_cmd(
    pattern: str = typer.Argument("*", help="fnmatch pattern, e.g. 'resnet2*'"),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
    verify: bool = typer.Option(
        False, "--verify", help="Exit non-zero unless every model's parameter count equals Table 1."
    ),
) -> None:
    """The zoo: architecture, exact parameter count against the report, and accuracies."""
    from rich import box
    from rich.table import Table

    from aperture_zoo.summary import zoo_rows

    with user_errors():
        rows = zoo_rows(pattern)
        if not rows:
            from aperture_zoo.registry import NoMatchingModelError, list_models

            raise NoMatchingModelError(
                f"no model matches {pattern!r}; patterns are fnmatch wildcards such as 'resnet2*'. "
                f"Available: {', '.join(list_models())}"
            )
    if json_out:
        print_json(rows)
    else:
        # Compact enough for 80 columns (CI logs, pipes), so no number is ever truncated.
        table = Table(
            title="aperture_zoo: CIFAR-10 ResNets (report Table 1)",
            box=box.SIMPLE_HEAD, show_edge=False, collapse_padding=True,
        )
        for col, justify in (("model", "left"), ("blocks B", "left"), ("channels C", "left"),
                             ("params", "right"), ("Table 1", "right"), ("report %", "right"),
                             ("our %", "right")):
            table.add_column(col, justify=justify, no_wrap=True)
        for r in rows:
            params = f"{r['params']:,}"
            table.add_row(
                r["name"], ",".join(map(str, r["blocks"])), ",".join(map(str, r["channels"])),
                params if r["params_match_report"] else f"[bold red]{params} ≠[/]",
                f"{r['report_params']:,}" if r["report_params"] else "—",
                _pct(r["report_top1_20ep"]), _pct(r["top1"]),
            )
        # Never cut a name or a number: a terminal narrower than the table wraps its lines instead.
        print_whole(table)
        published = [r for r in rows if r["weights"]]
        if published:
            print_whole(_published_table(published))
        for note in ("params: counted on the built model (red if it differs from Table 1)",
                     "report % / our %: top-1 accuracy, the report's at 20 epochs / ours at the last "
                     "epoch of our weights"):
            console.print(note, highlight=False)  # prose: wraps between words at the terminal width
    if verify and not all(r["params_match_report"] for r in rows):
        raise typer.Exit(code=1)


def _published_table(rows: list[dict]):  # type: ignore[no-untyped-def]
    """Top-1, top-1 with flip TTA and calibrated ECE of each published weights (from their records)."""
    from rich import box
    from rich.table import Table

    counts = sorted({r["measured_images"] for r in rows})
    where = f"all {counts[0]:,} CIFAR-10 test images" if counts == [10_000] else \
        "CIFAR-10 test images (" + ", ".join(f"{r['weights']}: {r['measured_images']:,}" for r in rows) + ")"
    table = Table(title=f"published weights: top-1, flip TTA and ECE, each on {where}",
                  caption="ECE: 15-bin calibration error of the probabilities predict_proba and ONNX files give (the "
                          "calibrator, cross-fitted on halves of the test set); with one temperature in brackets",
                  box=box.SIMPLE_HEAD, show_edge=False, collapse_padding=True)
    for col in ("weights", "top-1 %", "flip TTA %", "ECE %", "flip ECE %", "calibrator"):
        table.add_column(col, justify="left" if col in ("weights", "calibrator") else "right", no_wrap=True)
    for r in rows:
        one_t = "" if r.get("ece_temperature") is None else f" ({r['ece_temperature']:.2f})"
        table.add_row(r["weights"], _pct(r["top1"]), _pct(r["top1_tta"]), _pct(r["ece_calibrated"]) + one_t,
                      _pct(r.get("ece_tta_calibrated")), r.get("calibrator") or "—")
    return table


@app.command("info")
def info_cmd(
    name: str = typer.Argument(..., help=MODEL_HELP),
    weights: str | None = typer.Option(None, "--weights", help=WEIGHTS_HELP + " Described instead of the "
                                       "weights found on this disk."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """One model: spec, parameters, FLOPs per image, and the metadata of its weights if any."""
    from aperture_zoo.summary import model_info

    with user_errors():
        given = weights is not None or names_weights(name)
        info = model_info(name, open_for_command(name, weights) if given else None)
    if json_out:
        print_json(info)
        return
    spec = info["spec"]
    console.print(f"[bold]{safe(name)}[/]  ({info['depth']} weighted layers)", highlight=False)
    for key in ("blocks", "channels", "conv_kernel", "shortcut_kernel", "pool_kernel",
                "num_classes", "input_size", "mean", "std"):
        console.print(f"  {key:<16} {safe(fragment(spec[key]))}", highlight=False)
    if spec.get("class_names"):  # a dataset's own classes, shown as written
        console.print(f"  {'classes':<16} {safe(', '.join(map(fragment, spec['class_names'])))}", highlight=False, soft_wrap=True)
    report = "—" if info["report_params"] is None else f"{info['report_params']:,}"
    console.print(f"  {'parameters':<16} {info['params']:,} (report: {report})", highlight=False)
    console.print(f"  {'FLOPs/image':<16} {info['flops_per_image']:,} ({info['macs_per_image']:,} MACs)")
    weights = info["weights"]
    if weights is None:
        from aperture_zoo.catalog import find_weights

        record = find_weights(name)
        console.print("  weights          " + (
            f"published as {record.tag} ({record.top1:.2f}% final-epoch), not on this machine yet: "
            f"`aperture eval {name} --pretrained` or load(..., pretrained=True) fetches them"
            if record else "none published and none found locally (see `aperture train`)"), highlight=False,
            soft_wrap=True)
    else:
        kind = "published, SHA-256 pinned" if info["weights_published"] else \
            "NOT the published weights: yours" + ("" if given else ", from $APERTURE_WEIGHTS_DIR")
        console.print(f"  weights          {safe(weights['path'])} ({kind})", highlight=False, soft_wrap=True)
        for key, value in sorted(weights.items()):
            if key not in ("path", "spec", "label_names"):
                console.print(f"    {key:<18} {safe(fragment(value))}", highlight=False)


@app.command("samples")
def samples_cmd(
    models: list[str] = typer.Argument(None, help="Models to run (default: every model)."),
    show: str | None = typer.Option(None, "--show", help="Model whose per-image predictions are printed "
                                       "(default: resnet22 when it runs)."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Classify the 30 bundled CIFAR-10 test images with each published model (no download)."""
    from aperture_zoo.registry import get_spec
    from aperture_zoo.samples import classify_samples, sample_images

    with user_errors():
        for name in models or []:
            get_spec(name)
        if show is not None:
            get_spec(show)
            if models and show not in models:
                raise typer.BadParameter(f"--show {show} is not among the models run ({', '.join(models)}); add it "
                                         "or drop --show")
        show = show or "resnet22"
        results = classify_samples(models or None)
    if json_out:
        print_json([{"model": r.model, "published": r.published, "note": r.note, "accuracy": r.accuracy,
                     "calibrated": r.temperature is not None, "temperature": r.temperature,
                     "predictions": [{"image": f, "label": p, "probability": q} for f, p, q in r.predictions]}
                    for r in results])
        return
    for r in results:  # $APERTURE_WEIGHTS_DIR's file answered: said once, before its answers
        if r.note:
            err_console.print(f"note: {safe(r.note)}", highlight=False, soft_wrap=True)
    truth = {p.name: label for p, label in sample_images()}
    shown = next((r for r in results if r.model == show and r.predictions), None)
    if shown is not None:
        what = ("calibrated probability, temperature " + f"{shown.temperature:.3g}" if shown.temperature is not None
                else "uncalibrated probability: no temperature is known for these weights (T = 1)")
        console.print(f"[bold]{shown.model}[/] on the bundled CIFAR-10 test images ({what}, as `predict` gives it):",
                      highlight=False)
        for image, label, prob in shown.predictions:
            mark = "[green]ok[/]" if label == truth[image] else f"[red]no[/] (true: {safe(fragment(truth[image]))})"
            console.print(f"  {safe(f'{fragment(image):<28} {fragment(label):<10}')} {prob:6.1%}  {mark}", highlight=False)
    for r in results:
        if r.predictions:
            console.print(f"{r.model:<9} top-1 {r.correct}/{len(r.predictions)} "
                          f"({r.accuracy:.1f}%) on the bundled images", highlight=False)
        elif r.unavailable:
            err_console.print(f"[red]{r.model:<9} not run:[/] {safe(r.unavailable)}", highlight=False, soft_wrap=True)
        else:
            console.print(f"{r.model:<9} no published weights: architecture only "
                          f"(train it with `aperture train {r.model}`)", highlight=False)
    if any(r.unavailable for r in results):  # published weights that could not be used: not a success
        raise typer.Exit(code=1)


@app.command("convert")
def convert_cmd(
    checkpoint: Path = typer.Argument(..., help="A PyTorch .pth/.pt checkpoint you trust."),
    out: Path = typer.Argument(..., help="Where to write model.safetensors."),
    model: str = typer.Option(..., "--model", "-m", help="Architecture it holds, e.g. resnet22."),
    num_classes: Optional[int] = typer.Option(None, "--num-classes", help="Classes of its head (a fine-tune's; default 10)."),
    arch: list[str] = typer.Option([], "--arch", help="A derived shape, as `aperture train --arch` takes it (channels=..., blocks=...)."),
    mean: Optional[str] = typer.Option(None, "--mean", help="Per-channel mean its training normalised [0, 1] pixels with, e.g. 0.5,0.5,0.5 (not 0-255 units; default CIFAR-10's)."),
    std: Optional[str] = typer.Option(None, "--std", help="Per-channel std its training normalised with (with --mean)."),
    class_names: Optional[str] = typer.Option(None, "--class-names", help="Its classes in head order, e.g. cat,dog (default class_0, ...)."),
) -> None:
    """Convert a trusted pickle checkpoint to checked safetensors (the only weights format loaded)."""
    from aperture_zoo.registry import get_spec
    from aperture_zoo.convert import assumed_normalisation, convert_checkpoint, data_overrides
    from aperture_zoo.train.options import parse_arch

    with user_errors():
        get_spec(model)
        overrides = {**parse_arch(arch), **({"num_classes": num_classes} if num_classes is not None else {}),
                     **data_overrides(mean, std, class_names)}
        path = convert_checkpoint(checkpoint, out, model, **overrides)
    console.print(f"wrote {safe(path)}", highlight=False, soft_wrap=True)
    note = assumed_normalisation(model, **overrides)
    if note:
        err_console.print(f"note: {safe(note)}", highlight=False, soft_wrap=True)
