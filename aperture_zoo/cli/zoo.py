"""`aperture list` and `aperture info`."""

from __future__ import annotations

import typer

from . import app
from .common import console, print_json, user_errors


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
            caption="params: counted on the built model (red if it differs from Table 1); "
                    "top-1 %: the report's at 20 epochs / ours at the last epoch of our weights",
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
        console.print(table)
    if verify and not all(r["params_match_report"] for r in rows):
        raise typer.Exit(code=1)


@app.command("info")
def info_cmd(
    name: str = typer.Argument(..., help="Model name, e.g. resnet22"),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """One model: spec, parameters, FLOPs per image, and the metadata of its weights if any."""
    from aperture_zoo.summary import model_info

    with user_errors():
        info = model_info(name)
    if json_out:
        print_json(info)
        return
    spec = info["spec"]
    console.print(f"[bold]{name}[/]  ({info['depth']} weighted layers)")
    for key in ("blocks", "channels", "conv_kernel", "shortcut_kernel", "pool_kernel",
                "num_classes", "input_size", "mean", "std"):
        console.print(f"  {key:<16} {spec[key]}")
    console.print(f"  {'parameters':<16} {info['params']:,} (report: {info['report_params']:,})")
    console.print(f"  {'FLOPs/image':<16} {info['flops_per_image']:,} ({info['macs_per_image']:,} MACs)")
    weights = info["weights"]
    if weights is None:
        console.print("  weights          none found locally (see `aperture train`)")
    else:
        console.print(f"  weights          {weights['path']}")
        for key, value in sorted(weights.items()):
            if key not in ("path", "spec", "label_names"):
                console.print(f"    {key:<18} {value}")
