"""`aperture runtimes`: the runtime matrix (every file in today's and older runtimes, and each other
format's file in its own), a thin layer over aperture_zoo.export.matrix and format_matrix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from . import app
from .common import MODEL_HELP, WEIGHTS_HELP, console, err_console, print_json, safe, user_errors
from .export import _auto_data_dir, _load_model, _say


def _format_rows(files: dict, rows: list, cache_dir: Path | None, say: Any, model: Any, sha: str | None) -> Any:
    """The other formats' rows of the matrix, on the images the ONNX rows use (None: no such files);
    every file checked to be of the reference's weights first, before any work."""
    if not files:
        return None
    from aperture_zoo.export.format_matrix import check_format_files, run_format_rows
    from aperture_zoo.export.onnx_export import state_dict_sha256

    check_format_files(files, sha or state_dict_sha256(model), model.spec.name)

    return lambda pixels, reference, labels, described: run_format_rows(
        files, pixels, reference, labels=labels, rows=rows, cache_dir=cache_dir, images=described, progress=say)


@app.command("runtimes")
def runtimes_cmd(
    name: str = typer.Argument(..., help=MODEL_HELP),
    weights: str | None = typer.Option(None, "--weights", help=WEIGHTS_HELP + " The PyTorch reference."),
    pretrained: bool = typer.Option(False, "--pretrained", help="Use the published weights."),
    random_init: bool = typer.Option(False, "--random-init", help="Untrained weights (seed 0)."),
    onnx_dir: Path | None = typer.Option(None, "--onnx-dir", help="Folder with <name>.onnx (.fp16/.int8) from "
                                         "`aperture export`, and any of its other formats' files (.xml, .pte, "
                                         ".tflite: rows openvino-ir, executorch, litert); default: export ONNX here."),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="CIFAR-10: test images (and int8 calibration); "
                                         "else the 30 bundled test images, no int8."),
    max_images: int = typer.Option(1000, "--max-images", help="Stratified test images per cell."),
    only: str = typer.Option("all", "--runtimes", help="Comma-separated subset of ort, ort-cuda, ort-1.15, "
                             "ort-1.16, opencv-4, opencv-5, openvino (the ONNX files), openvino-ir, executorch, "
                             "litert (the other formats' files in --onnx-dir); or 'all'."),
    cache_dir: Path | None = typer.Option(None, "--cache-dir", help="Where the runtimes' venvs are kept "
                                          "(default $APERTURE_RUNTIMES_DIR or ~/.cache/aperture_zoo/runtimes)."),
    record: bool = typer.Option(False, "--record", help="Write the passing cells into the files' metadata "
                                "(validated_runtimes); needs --onnx-dir."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Also write the matrix as JSON here (e.g. "
                                    "model_cards/NAME/runtimes.json, which the card shows)."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Run the fp32/fp16/int8 files in today's and older onnxruntime and in OpenCV DNN; compare with PyTorch.

    Exits 1 when a file runs wrongly in a runtime it does not declare itself unfit for.
    """
    with user_errors():
        from aperture_zoo.export.errors import ExportError
        from aperture_zoo.export.format_matrix import FORMAT_RUNTIMES, format_files_in
        from aperture_zoo.export.matrix import DEFAULT_RUNTIMES, format_matrix, measure_model

        keys = [r.key for r in (*DEFAULT_RUNTIMES, *FORMAT_RUNTIMES)]
        chosen = keys if only.strip() == "all" else [k.strip() for k in only.split(",") if k.strip()]
        if not chosen or any(k not in keys for k in chosen):
            raise ExportError(f"--runtimes must name some of {', '.join(keys)} (or 'all'), got {only!r}")
        if max_images < 1:
            raise ExportError(f"--max-images must be at least 1, got {max_images}")
        if record and onnx_dir is None:
            raise ExportError("--record writes into existing files; pass them with --onnx-dir")
        model, sha = _load_model(name, weights, pretrained, random_init)
        from aperture_zoo.catalog import refuse_other_weights_folder, refuse_published_folder

        if out is not None:  # before the matrix runs: a folder of other weights takes no matrix of these
            refuse_other_weights_folder(out.parent, sha, "a runtime matrix of other weights would sit beside them",
                                        fix="Write it elsewhere with --out FILE")
        if record and onnx_dir is not None:  # --record writes into the files there
            refuse_published_folder(onnx_dir, sha, "recording other weights' runtime results into its files would "
                                    "describe them", fix="Export your weights elsewhere and record there")
        files, others, stem = None, {}, model.spec.name  # export names its files after the architecture
        if onnx_dir is not None:
            others = {row: f for row, f in format_files_in(onnx_dir, stem).items() if row in chosen}
            candidates = {"fp32": onnx_dir / f"{stem}.onnx", "fp16": onnx_dir / f"{stem}.fp16.onnx",
                          "int8": onnx_dir / f"{stem}.int8.onnx"}
            files = {p: f for p, f in candidates.items() if f.is_file()}
            if not files and not others:
                raise ExportError(f"no {stem}.onnx in {onnx_dir}; export it with `aperture export {name} --onnx -o {onnx_dir}`")
        with err_console.status("running the runtime matrix") as status:
            matrix = measure_model(model, files=files, data_dir=_auto_data_dir(data_dir), max_images=max_images,
                                   runtimes=[r for r in DEFAULT_RUNTIMES if r.key in chosen], cache_dir=cache_dir,
                                   weights_sha256=sha, record=record, progress=lambda m: _say(status, m),
                                   more_cells=_format_rows(others, [r for r in FORMAT_RUNTIMES if r.key in chosen],
                                                           cache_dir, lambda m: _say(status, m), model, sha))
        if out is not None:
            import json

            from aperture_zoo.files import atomic_write_text

            atomic_write_text(out, json.dumps(matrix.to_dict(), indent=2, sort_keys=True) + "\n")
    if json_out:
        print_json(matrix.to_dict())
    else:
        console.print(f"{safe(name)} on {safe(matrix.images)}, batch {matrix.batch}; reference: PyTorch fp32 (CPU)", highlight=False)
        console.print(format_matrix(matrix), highlight=False, markup=False, soft_wrap=True)
        for c in matrix.cells:
            if c.note and c.passed is not True:
                err_console.print(f"{c.runtime} {c.precision}: {c.note}", highlight=False, markup=False, soft_wrap=True)
    if not matrix.passed:
        raise typer.Exit(code=1)
