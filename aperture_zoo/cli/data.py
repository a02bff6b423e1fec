"""`aperture data-report`: what a folder dataset holds, before any training (``aperture_zoo.datareport``)."""

from __future__ import annotations

from pathlib import Path

import typer

from . import app
from .common import console, print_json, user_errors


@app.command("data-report")
def data_report_cmd(
    folder: Path = typer.Argument(..., help="A folder DIR/<class>/<image> (or DIR/train + DIR/test)."),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON (what run.json records)."),
) -> None:
    """Classes with counts, files ignored and why, unreadable files, exact duplicates and the folder's
    manifest; refuses (exit 2) what `aperture train --dataset` would refuse, naming the files."""
    with user_errors():
        from aperture_zoo.datareport import folder_report

        report = folder_report(folder)
    if json_out:
        print_json(report.to_dict())
        return
    for line in report.lines():  # outside text already has its control characters shown
        console.print(line, markup=False, highlight=False, soft_wrap=True)
