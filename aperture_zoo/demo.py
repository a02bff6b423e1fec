"""The browser demo (apps/web/): export the zoo's published models to ONNX, then serve the page.

The page runs the exported files with onnxruntime-web entirely in the browser; this module only
prepares files and serves them statically. It is kept apart from the CLI (`aperture demo`) so
tests drive the same code:

    entries = prepare_models(models_dir)            # export what has published weights, once
    with DemoServer(web_dir(), models_dir) as srv:  # 127.0.0.1, a free port with port=0
        print(srv.url)

``models.json`` beside the ONNX files tells the page every registered model, which ones it can
run, and why the others cannot (no published weights). Each model comes as fp32, fp16, (with
CIFAR-10 to calibrate on) int8 and fp32-flip (flip TTA in the graph) files; int8 is the page's default where its validation report
shows >= 99 % top-1 agreement with fp32 on the test images.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import tempfile
import threading
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, fields
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from .errors import ApertureError
from .files import atomic_write_text, file_sha256, read_json
from .registry import get_spec, list_models

MANIFEST = "models.json"
MANIFEST_FORMAT = "aperture_zoo.web/1"
ORT_DIST = Path("node_modules") / "onnxruntime-web" / "dist"
ORT_CHECKSUMS = "ort-dist.sha256"
NO_WEIGHTS = "no published weights"
PRECISIONS = ("fp32", "fp16", "int8")
FLIP = "fp32-flip"  # the fp32 file with flip test-time augmentation in the graph: twice the compute
INT8_DEFAULT_AGREEMENT = 99.0  # % top-1 agreement with fp32 on the validation images
NO_CALIBRATION = "int8 needs CIFAR-10 to calibrate on: pass --data-dir"


class DemoError(ApertureError, RuntimeError):
    """The demo cannot be prepared or served as asked (missing page, runtime, weights, port)."""


@dataclass
class DemoFile:
    """One ONNX file of a model, as the page's precision menu shows it."""

    precision: str
    file: str
    bytes: int
    agreement: float | None = None         # % top-1 agreement with fp32 PyTorch, from the validation report
    agreement_images: int | None = None    # test images that figure rests on
    tta: bool = False                       # the graph averages the image and its mirror (export --tta flip)
    temperature: float | None = None        # a one-temperature calibrator's T (older pages read it)
    calibrated: bool | None = None          # False: no calibrator was known at export (None: not recorded)
    calibrator: str | None = None           # what its ``probabilities`` output applies (Calibrator.describe)


@dataclass
class DemoModel:
    """One row of ``models.json``: what the page shows in its model menu."""

    name: str
    params: int
    available: bool
    file: str | None = None             # ONNX file name inside the models folder
    bytes: int | None = None
    weights_sha256: str | None = None
    top1: float | None = None           # CIFAR-10 test top-1 % recorded with the weights
    reason: str | None = None           # why it is not available
    labels: list[str] | None = None
    input_size: list[int] | None = None
    files: list[DemoFile] | None = None  # every precision written; ``file`` is the default one
    precision: str | None = None         # the default precision
    notes: list[str] | None = None       # e.g. why there is no int8 file

    def __post_init__(self) -> None:
        if self.files and isinstance(self.files[0], dict):  # read back from models.json
            self.files = [DemoFile(**f) for f in self.files]  # type: ignore[arg-type]


def default_precision(files: Iterable[DemoFile]) -> str:
    """int8 where its agreement with fp32 on the validation images is high enough, else fp32."""
    by = {f.precision: f for f in files}
    int8 = by.get("int8")
    if int8 is not None and int8.agreement is not None and int8.agreement >= INT8_DEFAULT_AGREEMENT:
        return "int8"
    return "fp32"


def validation_agreement(report_file: str | os.PathLike[str]) -> tuple[float, int] | None:
    """(agreement %, images) of a validation report's CIFAR-10 test comparison, or None."""
    try:
        report = read_json(report_file)
    except ApertureError:  # no report (not validated): no figure
        return None
    for comp in report.get("comparisons", []):
        if comp.get("inputs") == "CIFAR-10 test" and comp.get("agreement") is not None:
            return float(comp["agreement"]), int(comp["num_images"])
    return None


def web_dir() -> Path:
    """``apps/web`` of the source checkout this package runs from (the page is not in the wheel)."""
    path = Path(__file__).resolve().parent.parent / "apps" / "web"
    if not (path / "index.html").is_file():
        raise DemoError(
            f"the web demo is not at {path}: it ships with the source repository, not the wheel; "
            "run `aperture demo` from a clone (pip install -e .) or pass --web-dir"
        )
    return path


def check_web_runtime(web: Path) -> Path:
    """The onnxruntime-web ``dist`` folder the page loads, checked against the pinned SHA-256s.

    ``npm ci`` already verifies the package tarball against package-lock.json; this checks the
    files actually served, so a hand-edited or partly installed node_modules is caught too.
    """
    dist = web / ORT_DIST
    fix = f"run `npm ci --prefix {web}` (or `make demo`)"
    sums = web / ORT_CHECKSUMS
    if not dist.is_dir():
        raise DemoError(f"onnxruntime-web is not installed in {dist.parent}: {fix}")
    for line in sums.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        want, name = line.split(maxsplit=1)
        path = web / name.lstrip("*")
        if not path.is_file():
            raise DemoError(f"{path} is missing from the onnxruntime-web install: {fix}")
        got = file_sha256(path)
        if got != want:
            raise DemoError(
                f"{path} has SHA-256 {got}, not the pinned {want}: the installed onnxruntime-web "
                f"is not the version in package-lock.json; {fix}"
            )
    return dist


def published_weights(name: str) -> Any:
    """The weights ``load(name, pretrained=True)`` would use (``pretrained.Loaded``), read once
    without the network, or None."""
    from .pretrained import NoPretrainedWeightsError, fetch_weights

    try:
        return fetch_weights(name, download=False)
    except NoPretrainedWeightsError:
        return None


def _read_manifest(models_dir: Path) -> dict[str, dict[str, Any]]:
    """The previous run's manifest; anything unreadable just means every model is exported again."""
    try:
        return {m["name"]: m for m in read_json(models_dir / MANIFEST)["models"]}
    except (ApertureError, KeyError, TypeError):
        return {}


def write_manifest(models_dir: str | os.PathLike[str], entries: Iterable[DemoModel]) -> Path:
    """Write ``models.json`` (atomically: the page may be reading it)."""
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    path = models_dir / MANIFEST
    return atomic_write_text(path, json.dumps({"format": MANIFEST_FORMAT, "models": [asdict(e) for e in entries]},
                                              indent=1) + "\n")


def export_for_demo(model: Any, models_dir: str | os.PathLike[str], weights_sha256: str | None = None,
                    *, validate: bool = True, exporter: str = "dynamo",
                    data_dir: str | os.PathLike[str] | None = None, max_val_images: int | None = 1000) -> DemoModel:
    """Export one model to ``<models_dir>/<name>[.fp16|.int8|.tta].onnx`` and describe it for the page.

    int8 is written only with ``data_dir`` (CIFAR-10: calibration, and the test images its
    agreement with fp32 is measured on). Files are written to a temporary folder and moved into
    place with their validation reports, so the server never serves half a file.
    """
    from .export.pipeline import export_model

    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    name = model.spec.name
    with tempfile.TemporaryDirectory(dir=models_dir, prefix=f".{name}-") as tmp:
        result = export_model(model, tmp, weights_sha256=weights_sha256, exporter=exporter,  # type: ignore[arg-type]
                              provider="cpu", run_validation=validate, fp16=True, int8=data_dir is not None,
                              data_dir=data_dir, max_val_images=max_val_images)
        failed = [r for r in result.reports if not r.passed]
        if any(r.precision == "fp32" for r in failed):
            failures = "; ".join(f for r in failed for f in r.failures)
            raise DemoError(f"the ONNX export of {name} does not match PyTorch ({failures}); "
                            f"run `aperture export {name} --onnx --pretrained` to see the report")
        # an fp16/int8 file outside its tolerance is left out; the page offers the others
        notes = [f"{r.precision} left out: it failed validation ({r.failures[0]})" for r in failed]
        files = []
        for path in result.files:
            target = models_dir / path.name
            report = path.with_name(path.stem + ".report.json")
            if report.is_file():
                os.replace(report, models_dir / report.name)
            else:  # not validated: an earlier export's report must not vouch for this file
                (models_dir / report.name).unlink(missing_ok=True)
            os.replace(path, target)
            precision = target.name.removesuffix(".onnx").removeprefix(name).lstrip(".") or "fp32"
            agreement = validation_agreement(models_dir / report.name)
            files.append(DemoFile(precision, target.name, target.stat().st_size,
                                  *(agreement if agreement else (None, None)), **_calibration(target)))
        files.append(_flip_file(model, models_dir, tmp, weights_sha256, validate, exporter, data_dir, max_val_images))
    spec = model.spec
    precision = default_precision(files)
    chosen = next(f for f in files if f.precision == precision)
    return DemoModel(
        name=name, params=sum(p.numel() for p in model.parameters()), available=True, file=chosen.file,
        bytes=chosen.bytes, weights_sha256=weights_sha256, labels=list(spec.label_names),
        input_size=list(spec.input_size), files=files, precision=precision,
        notes=(notes + ([] if data_dir is not None else [NO_CALIBRATION])) or None,
    )


def _flip_file(model: Any, models_dir: Path, tmp: str, weights_sha256: str | None, validate: bool, exporter: str,
               data_dir: Any, max_val_images: int | None) -> DemoFile:
    """``<name>.tta.onnx``: the same model averaging the image and its mirror, offered as ``fp32-flip``.

    Held to the fp32 file's standard: a flip graph that does not match PyTorch's ``eval --tta`` is the
    same fp32 network wired wrongly, so the model is refused rather than offered without it."""
    from .export.pipeline import export_model

    result = export_model(model, tmp, weights_sha256=weights_sha256, exporter=exporter,  # type: ignore[arg-type]
                          provider="cpu", run_validation=validate, tta=True, data_dir=data_dir,
                          max_val_images=max_val_images)
    if any(not r.passed for r in result.reports):
        failures = "; ".join(f for r in result.reports for f in r.failures)
        raise DemoError(f"the flip-TTA ONNX export of {model.spec.name} does not match PyTorch's `eval --tta` "
                        f"({failures}); run `aperture export {model.spec.name} --onnx --pretrained --tta flip` to see it")
    path = result.files[0]
    target = models_dir / path.name
    report = path.with_name(path.stem + ".report.json")
    if report.is_file():
        os.replace(report, models_dir / report.name)
    else:
        (models_dir / report.name).unlink(missing_ok=True)
    os.replace(path, target)
    return DemoFile(FLIP, target.name, target.stat().st_size, tta=True, **_calibration(target))


def _calibration(path: Path) -> dict[str, Any]:
    """What a written file's ``probabilities`` output applies, from its own metadata (the file is the truth)."""
    from .export.predict import OnnxClassifier

    clf = OnnxClassifier(path, provider="cpu")
    cal = clf.calibrator if clf.calibrated else None
    return {"temperature": cal.temperature if cal is not None and cal.kind == "temperature" else None,
            "calibrated": clf.calibrated, "calibrator": cal.describe() if cal is not None else None}


def add_onnx_files(models_dir: str | os.PathLike[str], files: Iterable[str | os.PathLike[str]],
                   taken: Iterable[str] = ()) -> list[DemoModel]:
    """Offer exported files (a run's ``aperture export`` output) in the page, with their own class names.

    Each file is checked to be an image classifier taking pixels in [0, 1] (normalisation in the
    graph, as the page feeds them) and copied into the models folder; its menu name is its file
    stem (made unique). Reads ONNX metadata only: no torch.
    """
    import shutil

    import numpy as np
    import onnx

    from .errors import ApertureError as _Refused
    from .export.predict import OnnxClassifier

    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    names, entries = set(taken), []
    for src in map(Path, files):
        if not src.is_file():
            raise DemoError(f"{str(src)!r} does not exist; pass an .onnx file written by `aperture export --onnx`")
        try:  # the checks `aperture predict --onnx` makes: graph signature, metadata against it, calibrator
            clf = OnnxClassifier(src, provider="cpu")
        except _Refused as exc:
            raise DemoError(str(exc)) from None
        meta = clf.metadata
        if "label_names" not in meta or "input" not in meta:
            raise DemoError(f"{str(src)!r} has no aperture_zoo metadata (class names, input shape); export it with "
                            "`aperture export NAME --weights FILE --onnx`")
        if not clf.normalize_in_graph:
            raise DemoError(f"{str(src)!r} was exported with --no-normalize; the page feeds pixels in [0, 1], so "
                            "export it again without that option")
        name, n = src.stem, 2
        while name in names:
            name, n = f"{src.stem}-{n}", n + 1
        names.add(name)
        target = models_dir / f"{name}.onnx"
        if src.resolve() != target.resolve():
            tmp = target.with_name(f".{target.name}.tmp")
            shutil.copyfile(src, tmp)
            os.replace(tmp, target)
        graph = onnx.load(str(target), load_external_data=False).graph
        params = sum(int(np.prod(t.dims)) for t in graph.initializer)
        tta = clf.tta == "flip"
        precision = meta.get("precision") if meta.get("precision") in PRECISIONS else "fp32"
        file = DemoFile(FLIP if tta and precision == "fp32" else precision, target.name, target.stat().st_size, tta=tta,
                        **_calibration(target))
        entries.append(DemoModel(name=name, params=params, available=True, file=target.name,
                                 bytes=target.stat().st_size, weights_sha256=meta.get("weights_sha256"),
                                 labels=list(clf.labels), input_size=[3, clf.image_size[1], clf.image_size[0]],
                                 files=[file], precision=file.precision))
    return entries


def prepare_models(
    models_dir: str | os.PathLike[str],
    names: Iterable[str] | None = None,
    progress: Callable[[str], None] | None = None,
    data_dir: str | os.PathLike[str] | None = None,
) -> list[DemoModel]:
    """Export every model with published weights (``names``: a subset) and write ``models.json``.

    The files are reused while the weights they came from are unchanged (same SHA-256) and an
    int8 file is there when ``data_dir`` is given, so only the first run pays for the exports.
    Models without published weights are listed as such.
    """
    from .summary import parameter_count
    from .pretrained import model_from
    from .weights import decode_metadata

    say = progress or (lambda _msg: None)
    models_dir = Path(models_dir)
    wanted = list(names) if names is not None else list_models()
    for name in wanted:
        get_spec(name)  # unknown names fail here, with suggestions
    previous = _read_manifest(models_dir)
    entries = []
    for name in list_models():
        spec = get_spec(name)
        weights = published_weights(name) if name in wanted else None
        if weights is None:
            reason = NO_WEIGHTS if name in wanted else "not selected for this demo"
            entries.append(DemoModel(name=name, params=parameter_count(name), available=False, reason=reason))
            continue
        sha = weights.sha256
        top1 = decode_metadata(weights.metadata).get("test_top1")
        old = previous.get(name)
        old_files = [f["file"] for f in (old or {}).get("files") or []]
        reusable = (old and old.get("available") and old.get("weights_sha256") == sha and old_files
                    and all((models_dir / f).is_file() for f in old_files)
                    and any(f.get("precision") == FLIP for f in old.get("files") or [])  # older folders: add it
                    and (data_dir is None or NO_CALIBRATION not in (old.get("notes") or [])))
        if reusable:
            say(f"{name}: up to date ({', '.join(old_files)})")
            known = {f.name for f in fields(DemoModel)}
            entry = DemoModel(**{k: v for k, v in old.items() if k in known})  # type: ignore[arg-type]
            entry.top1 = top1
        else:
            say(f"{name}: exporting to ONNX fp32, fp16{', int8' if data_dir else ''}, fp32-flip (once; later runs reuse them)")
            entry = export_for_demo(model_from(weights), models_dir, sha, data_dir=data_dir)
            entry.top1 = top1
        entry.labels, entry.input_size = list(spec.label_names), list(spec.input_size)
        entries.append(entry)
    write_manifest(models_dir, entries)
    return entries


class _Handler(SimpleHTTPRequestHandler):
    """Static files with the headers the page needs; ``/models/`` comes from the models folder."""

    models_dir: Path | None = None
    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, ".mjs": "text/javascript",
                      ".js": "text/javascript", ".wasm": "application/wasm", ".onnx": "application/octet-stream",
                      ".json": "application/json"}

    def translate_path(self, path: str) -> str:
        if self.models_dir is not None and (path == "/models" or path.startswith(("/models/", "/models?"))):
            root = self.directory
            self.directory = str(self.models_dir)
            try:
                return super().translate_path(path[len("/models"):] or "/")
            finally:
                self.directory = root
        return super().translate_path(path)

    def send_head(self):  # type: ignore[no-untyped-def]
        """Every request gets an HTTP reply: a path the OS cannot even look up is 400 or 404, not a dropped socket."""
        try:
            return super().send_head()
        except ValueError:  # e.g. an encoded NUL byte (/%00): no file can have that name
            self.send_error(400, "Malformed path")
        except OSError:  # a path through a file (/index.html/x), too long a name, ...
            self.send_error(404, "File not found")
        return None

    def end_headers(self) -> None:
        # Cross-origin isolation lets onnxruntime-web use its multi-threaded WebAssembly build.
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cache-Control", "no-cache")  # a re-exported model is picked up on reload
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass


class _Server(ThreadingHTTPServer):
    """A client that goes away mid-download is normal for a browser: not a traceback on the console."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return
        print(f"demo server: a request from {client_address[0]} failed: {type(exc).__name__}: {exc}", file=sys.stderr)


def check_port(port: int) -> None:
    """A port number the OS can bind (checked before anything else runs)."""
    if not 0 <= port <= 65535:
        raise DemoError(f"--port must be in 0..65535 (0 picks a free one), got {port}")


class DemoServer:
    """The static server of the demo, on a background thread; use as a context manager."""

    def __init__(self, web: str | os.PathLike[str], models_dir: str | os.PathLike[str] | None = None,
                 host: str = "127.0.0.1", port: int = 8000) -> None:
        web = Path(web)
        handler = type("Handler", (_Handler,), {"models_dir": Path(models_dir) if models_dir else None})
        try:
            check_port(port)
            self.httpd = _Server((host, port), functools.partial(handler, directory=str(web)))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise DemoError(f"port {port} on {host} is already in use (another `aperture demo`?); "
                                "pass --port N with a free port, or --port 0 to pick one") from None
            raise DemoError(f"cannot serve on {host}:{port} ({exc.strerror}); pass another --host or --port") from None
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        shown = f"[{host}]" if ":" in str(host) else host
        return f"http://{shown}:{port}/"

    def start(self) -> DemoServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="aperture-demo", daemon=True)
        self._thread.start()
        return self

    def wait(self) -> None:
        """Block until the server stops (Ctrl-C raises KeyboardInterrupt here)."""
        while self._thread is not None and self._thread.is_alive():
            self._thread.join(0.5)

    def close(self) -> None:
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join()
        self.httpd.server_close()

    def __enter__(self) -> DemoServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def default_models_dir(web: Path) -> Path:
    """Where `aperture demo` keeps its exports: ``apps/web/models`` (git-ignored)."""
    return web / "models"
