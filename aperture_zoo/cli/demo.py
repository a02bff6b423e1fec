"""`aperture demo`: export the published models to ONNX (once) and serve the browser demo."""

from __future__ import annotations

from pathlib import Path

import typer

from . import app
from aperture_zoo.terminal import fragment

from .common import console, err_console, safe, user_errors


@app.command("demo")
def demo_cmd(
    models: list[str] | None = typer.Argument(None, help="Models to offer (default: every one with published weights)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to serve on (default: this machine only)."),
    port: int = typer.Option(8000, "--port", help="Port to serve on; 0 picks a free one."),
    models_dir: Path | None = typer.Option(None, "--models-dir", help="Folder for the exported ONNX files (default: apps/web/models)."),
    web_dir: Path | None = typer.Option(None, "--web-dir", help="The page's folder (default: apps/web of this checkout)."),
    onnx: list[Path] = typer.Option([], "--onnx", help="Also offer this exported file (e.g. a run's "
                                    "`aperture export --onnx` output, with its own class names); repeatable. "
                                    "With --onnx and no model names, only these files are offered."),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="CIFAR-10 to calibrate and validate the int8 files "
                                         "(default: the data folder when CIFAR-10 is there; without it: fp32 and fp16 only)."),
) -> None:
    """Serve the browser demo: onnxruntime-web runs the exported models in the page, offline."""
    with user_errors():
        from aperture_zoo.demo import add_onnx_files, prepare_models, write_manifest
        from aperture_zoo.demo_server import DemoServer, check_port, check_web_runtime, default_models_dir
        from aperture_zoo.demo_server import web_dir as find_web_dir

        from .export import _auto_data_dir

        check_port(port)
        data = _auto_data_dir(data_dir)
        web = web_dir.resolve() if web_dir else find_web_dir()
        check_web_runtime(web)
        out = models_dir or default_models_dir(web)
        server = DemoServer(web, out, host=host, port=port)  # a busy port fails before any export
        try:
            with err_console.status("preparing models") as status:
                entries = [] if onnx and not models else prepare_models(
                    out, models or None, progress=lambda m: status.update(safe(m)), data_dir=data)
                if onnx:
                    entries = [e for e in entries if e.available] + add_onnx_files(out, onnx, [e.name for e in entries])
                    write_manifest(out, entries)
        except BaseException:
            server.close()
            raise
    offered = [e.name for e in entries if e.available]
    missing = [e.name for e in entries if not e.available and e.reason == "no published weights"]
    console.print(f"models: {', '.join(safe(fragment(o)) for o in offered)}", highlight=False)  # your files' names come from outside
    for e in entries:
        if e.available and e.files:
            shown = ", ".join(f"{f.precision}" + (f" ({f.agreement:.2f} % agreement with fp32)" if f.agreement is not None
                                                   and f.precision != "fp32" else "") for f in e.files)
            own = f" (your file; classes {', '.join(map(fragment, e.labels or []))})" if e.source_sha256 else ""
            console.print(f"  {safe(fragment(e.name))}: {safe(shown)}; default {safe(e.precision)}{safe(own)}", highlight=False)
    for note in dict.fromkeys(e.weights_note for e in entries if e.weights_note):
        err_console.print(f"note: {safe(note)}", highlight=False, soft_wrap=True)
    if data is None:
        err_console.print("[yellow]no int8 files:[/] int8 needs CIFAR-10 to calibrate on; pass --data-dir", highlight=False)
    if missing:
        err_console.print(f"[yellow]no published weights (not offered):[/] {safe(', '.join(missing))}", highlight=False)
    with server:
        console.print(f"Serving the aperture_zoo demo at [bold]{server.url}[/] (Ctrl-C to stop)", highlight=False)
        try:
            server.wait()
        except KeyboardInterrupt:
            console.print("stopped")
