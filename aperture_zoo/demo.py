"""The browser demo's models folder (apps/web/models): the zoo's published models and your own files.

The page runs the exported files with onnxruntime-web entirely in the browser; this module prepares
those files and ``demo_server`` serves them. Kept apart from the CLI (`aperture demo`) so tests drive
the same code:

    entries = prepare_models(models_dir)            # export what has published weights, once
    with DemoServer(web_dir(), models_dir) as srv:  # 127.0.0.1, a free port with port=0
        print(srv.url)

``models.json`` beside the ONNX files tells the page every registered model, which ones it can
run, and why the others cannot (no published weights). Each model comes as fp32, fp16, (with
CIFAR-10 to calibrate on) int8 and fp32-flip (flip TTA in the graph) files; int8 is the page's
default where its validation report shows >= 99 % top-1 agreement with fp32 on the test images.

Every file records what it was made from and is reused only while that holds, by content: each
entry records its files' SHA-256 and the weights' (a published model) or the SHA-256 of the file it
was copied from (your own, ``--onnx``). Your files are copied into ``own/`` under names of their
own, so they can never take the place of a published file, and their class names and calibrator
come from their own metadata. Each model's files are written as one set (``filesets``).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from .demo_server import (ORT_CHECKSUMS, ORT_DIST, DemoError, DemoServer, check_port, check_web_runtime,  # noqa: F401
                          default_models_dir, web_dir)
from .errors import ApertureError
from .files import REPORT_SUFFIX, atomic_write_text, file_sha256, read_json
from .filesets import copy_file, move_in, staged
from .registry import get_spec, list_models

MANIFEST = "models.json"
MANIFEST_FORMAT = "aperture_zoo.web/1"
OWN_DIR = "own"  # copies of your files (`--onnx`): never a published file's name
NO_WEIGHTS = "no published weights"
PRECISIONS = ("fp32", "fp16", "int8")
FLIP = "fp32-flip"  # the fp32 file with flip test-time augmentation in the graph: twice the compute
INT8_DEFAULT_AGREEMENT = 99.0  # % top-1 agreement with fp32 on the validation images
NO_CALIBRATION = "int8 needs CIFAR-10 to calibrate on: pass --data-dir"
VARIANTS = ("", ".fp16", ".int8", ".tta")  # <name><variant>.onnx: what export_for_demo writes


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
    sha256: str | None = None               # of the file as written: reused only while its bytes are these


@dataclass
class DemoModel:
    """One row of ``models.json``: what the page shows in its model menu."""

    name: str
    params: int
    available: bool
    file: str | None = None             # ONNX file name inside the models folder
    bytes: int | None = None
    weights_sha256: str | None = None   # the weights the files were exported from
    top1: float | None = None           # test top-1 % the weights record (a run on your data: its test split)
    reason: str | None = None           # why it is not available
    labels: list[str] | None = None
    input_size: list[int] | None = None
    files: list[DemoFile] | None = None  # every precision written; ``file`` is the default one
    precision: str | None = None         # the default precision
    notes: list[str] | None = None       # e.g. why there is no int8 file
    source_sha256: str | None = None     # your own file (--onnx): SHA-256 of the file it was copied from
    weights_note: str | None = None      # the name's weights came from $APERTURE_WEIGHTS_DIR: not the published ones

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


def validation_agreement(report_file: str | os.PathLike[str], onnx_file: str | os.PathLike[str],
                         weights_sha256: str) -> tuple[float, int] | None:
    """(agreement %, images) of a validation report's CIFAR-10 test comparison, or None: no report, one
    about another file or other weights (``provenance.check_report``), or no test-image figure."""
    from .provenance import check_report

    try:
        report = check_report(report_file, weights_sha256, onnx_file)
    except ApertureError:  # not validated, or not this file's report: no figure
        return None
    for comp in report.get("comparisons", []):
        if comp.get("inputs") == "CIFAR-10 test" and comp.get("agreement") is not None:
            return float(comp["agreement"]), int(comp["num_images"])
    return None


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
    """Write ``models.json`` (atomically: the page may be reading it), with ``written``: every file the demo
    wrote here and is still here, by SHA-256, so that it never replaces or deletes one it did not write."""
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    entries = list(entries)
    written = {k: v for k, v in _recorded(models_dir).items() if v is not None and (models_dir / k).is_file()}
    for f in (f for e in entries for f in e.files or []):
        if f.sha256 or (models_dir / f.file).is_file():
            written[f.file] = f.sha256 or file_sha256(models_dir / f.file)
        report = f.file.removesuffix(".onnx") + REPORT_SUFFIX
        if (models_dir / report).is_file():
            written[report] = file_sha256(models_dir / report)
    doc = {"format": MANIFEST_FORMAT, "models": [asdict(e) for e in entries], "written": dict(sorted(written.items()))}
    return atomic_write_text(models_dir / MANIFEST, json.dumps(doc, indent=1) + "\n")


def _record_written(models_dir: Path, names: Iterable[str]) -> None:
    """Files just moved in, added to models.json's ``written`` at once (not when the entries are): a run
    killed before its manifest leaves files the next run still knows as the demo's own."""
    doc = _own_manifest(models_dir) or {"format": MANIFEST_FORMAT, "models": []}
    written = _recorded(models_dir)
    written.update({n: file_sha256(models_dir / n) for n in names if (models_dir / n).is_file()})
    doc["written"] = dict(sorted(written.items()))
    atomic_write_text(models_dir / MANIFEST, json.dumps(doc, indent=1) + "\n")


def _own_manifest(models_dir: Path) -> dict[str, Any] | None:
    """The demo's own models.json (None: there is none); any other file of that name is refused, not replaced."""
    path = models_dir / MANIFEST
    if not path.exists() and not path.is_symlink():
        return None
    try:
        doc = read_json(path)
    except ApertureError:
        doc = None
    if not isinstance(doc, dict) or doc.get("format") != MANIFEST_FORMAT or path.is_symlink():
        raise DemoError(f"{path} is not the demo's own manifest (no \"format\": \"{MANIFEST_FORMAT}\"), and the demo "
                        f"would replace it; use an empty --models-dir or remove {path.name}")
    return doc


def _recorded(models_dir: Path) -> dict[str, str | None]:
    """The files the demo's models.json says it wrote here: path -> SHA-256 (None: the report of a recorded
    model, in a manifest older than the ``written`` record, vouched for by its model's hash)."""
    doc = _own_manifest(models_dir) or {}
    if isinstance(doc.get("written"), dict):
        return {str(k): v for k, v in doc["written"].items() if isinstance(v, str)}
    out: dict[str, str | None] = {}
    for m in doc.get("models") or []:
        for f in (m.get("files") or []) if isinstance(m, dict) else []:
            if isinstance(f, dict) and isinstance(f.get("file"), str) and isinstance(f.get("sha256"), str):
                out[f["file"]] = f["sha256"]
                out.setdefault(f["file"].removesuffix(".onnx") + REPORT_SUFFIX, None)
    return out


def check_replaceable(models_dir: Path, names: Iterable[str], stage: Path | None = None) -> None:
    """Nothing is lost: each file in ``models_dir`` the demo is about to replace or delete is one it wrote (its
    models.json records it with these bytes) or already holds the bytes replacing it (in ``stage``). Any other
    (the user's own export, a file changed since) is refused, naming it; files it would not touch are left alone."""
    recorded: dict[str, str | None] | None = None
    for name in dict.fromkeys(names):
        path = models_dir / name
        if not path.exists() and not path.is_symlink():
            continue
        if path.is_file() and not path.is_symlink():
            digest = file_sha256(path)
            if stage is not None and (stage / name).is_file() and file_sha256(stage / name) == digest:
                continue
            recorded = _recorded(models_dir) if recorded is None else recorded
            if name in recorded and recorded[name] in (None, digest):
                continue
        raise DemoError(f"{path} is not a file the demo wrote (its {MANIFEST} records no such file with these bytes), "
                        f"and preparing the demo would replace or delete it; use an empty --models-dir or move it away")


def export_for_demo(model: Any, models_dir: str | os.PathLike[str], weights_sha256: str | None = None,
                    *, validate: bool = True, exporter: str = "dynamo",
                    data_dir: str | os.PathLike[str] | None = None, max_val_images: int | None = 1000) -> DemoModel:
    """Export one model to ``<models_dir>/<name>[.fp16|.int8|.tta].onnx`` and describe it for the page.

    int8 is written only with ``data_dir`` (CIFAR-10: calibration, and the test images its
    agreement with fp32 is measured on). The files and their validation reports are written into a
    stage folder and moved in as one set, replacing every file of the model's earlier export, so the
    server never serves half a set.
    """
    from .export.onnx_export import state_dict_sha256
    from .export.pipeline import export_model

    models_dir = Path(models_dir)
    name = model.spec.name
    made_from = weights_sha256 or state_dict_sha256(model)  # what the reports record when no file is named
    replaced = [f"{name}{v}{tag}{ext}" for v in VARIANTS for tag in ("", ".FAILED") for ext in (".onnx", REPORT_SUFFIX)]
    check_replaceable(models_dir, replaced)  # a file that is not the demo's: refused before the export, not after
    with staged(models_dir) as stage:
        result = export_model(model, stage, weights_sha256=weights_sha256, exporter=exporter,  # type: ignore[arg-type]
                              provider="cpu", run_validation=validate, fp16=True, int8=data_dir is not None,
                              data_dir=data_dir, max_val_images=max_val_images)
        failed = [r for r in result.reports if not r.passed]
        if any(r.precision == "fp32" for r in failed):
            failures = "; ".join(f for r in failed for f in r.failures)
            raise DemoError(f"the ONNX export of {name} does not match PyTorch ({failures}); "
                            f"run `aperture export {name} --onnx --pretrained` to see the report")
        # an fp16/int8 file outside its tolerance is left out; the page offers the others
        notes = [f"{r.precision} left out: it failed validation ({r.failures[0]})" for r in failed]
        for bad in result.failed_files:
            bad.unlink()
            bad.with_name(bad.name.removesuffix(".onnx") + REPORT_SUFFIX).unlink(missing_ok=True)
        flip = _flip_result(model, stage, weights_sha256, validate, exporter, data_dir, max_val_images)
        files = [_describe(path, model, made_from) for path in [*result.files, flip]]
        new = [p.name for p in stage.iterdir() if p.is_file()]
        check_replaceable(models_dir, [*replaced, *new], stage)
        move_in(stage, models_dir, new, replaced)
        _record_written(models_dir, new)
    precision = default_precision(files)
    chosen = next(f for f in files if f.precision == precision)
    return _from_files(DemoModel(
        name=name, params=sum(p.numel() for p in model.parameters()), available=True, file=chosen.file,
        bytes=chosen.bytes, weights_sha256=weights_sha256, files=files, precision=precision,
        notes=(notes + ([] if data_dir is not None else [NO_CALIBRATION])) or None,
    ), models_dir)


def _describe(path: Path, model: Any, made_from: str) -> DemoFile:
    """A staged file as the page's menu shows it, with its agreement figure if its report vouches for it
    (its calibration: ``_from_files``, once it is moved in)."""
    stem = path.name.removesuffix(".onnx")
    tta = stem.endswith(".tta")
    precision = FLIP if tta else (stem.removeprefix(model.spec.name).lstrip(".") or "fp32")
    agreement = validation_agreement(path.with_name(stem + REPORT_SUFFIX), path, made_from)
    return DemoFile(precision, path.name, path.stat().st_size, *(agreement if agreement else (None, None)), tta=tta,
                    sha256=file_sha256(path))


def _model_facts(clf: Any) -> dict[str, Any]:
    """What models.json tells the page about a model, from the file it runs (``clf`` an ``OnnxClassifier``):
    the one rule for exports of a name's weights and for your ``--onnx`` files. A name's registry spec
    proves nothing: ``$APERTURE_WEIGHTS_DIR`` may hold a 2-class run of it."""
    return {"labels": list(clf.labels), "input_size": [3, clf.image_size[1], clf.image_size[0]]}


def _from_files(entry: DemoModel, models_dir: Path) -> DemoModel:
    """``entry`` with its class names, input size and each file's calibration read from its files (a reused
    entry's models.json may predate that rule)."""
    from .export.predict import OnnxClassifier

    for f in entry.files or []:
        clf = OnnxClassifier(models_dir / f.file, provider="cpu")
        for key, value in _calibration(clf).items():
            setattr(f, key, value)
        if f.file == entry.file:
            for key, value in _model_facts(clf).items():
                setattr(entry, key, value)
    return entry


def _flip_result(model: Any, stage: Path, weights_sha256: str | None, validate: bool, exporter: str,
                 data_dir: Any, max_val_images: int | None) -> Path:
    """``<name>.tta.onnx``: the same model averaging the image and its mirror, offered as ``fp32-flip``.

    Held to the fp32 file's standard: a flip graph that does not match PyTorch's ``eval --tta`` is the
    same fp32 network wired wrongly, so the model is refused rather than offered without it."""
    from .export.pipeline import export_model

    result = export_model(model, stage, weights_sha256=weights_sha256, exporter=exporter,  # type: ignore[arg-type]
                          provider="cpu", run_validation=validate, tta=True, data_dir=data_dir,
                          max_val_images=max_val_images)
    if any(not r.passed for r in result.reports):
        failures = "; ".join(f for r in result.reports for f in r.failures)
        raise DemoError(f"the flip-TTA ONNX export of {model.spec.name} does not match PyTorch's `eval --tta` "
                        f"({failures}); run `aperture export {model.spec.name} --onnx --pretrained --tta flip` to see it")
    return result.files[0]


def _calibration(clf: Any) -> dict[str, Any]:
    """What a file's ``probabilities`` output applies, from its own metadata (the file is the truth):
    ``clf`` an ``OnnxClassifier`` of it."""
    cal = clf.calibrator if clf.calibrated else None
    return {"temperature": cal.temperature if cal is not None and cal.kind == "temperature" else None,
            "calibrated": clf.calibrated, "calibrator": cal.describe() if cal is not None else None}


def _reusable(old: dict[str, Any] | None, models_dir: Path, sha: str, data_dir: Any) -> bool:
    """An earlier export of these weights whose every file is still the one it recorded (bytes and weights)."""
    from .provenance import check_onnx

    files = (old or {}).get("files") or []
    if not (old and old.get("available") and old.get("weights_sha256") == sha and files
            and any(f.get("precision") == FLIP for f in files)  # older folders: add it
            and (data_dir is None or NO_CALIBRATION not in (old.get("notes") or []))):
        return False
    try:
        for f in files:
            path = models_dir / f["file"]
            if not path.is_file() or file_sha256(path) != f.get("sha256"):
                return False
            check_onnx(path, sha)
    except (ApertureError, KeyError, TypeError, OSError):
        return False
    return True


def add_onnx_files(models_dir: str | os.PathLike[str], files: Iterable[str | os.PathLike[str]],
                   taken: Iterable[str] = ()) -> list[DemoModel]:
    """Offer exported files (a run's ``aperture export`` output) in the page, with their own class names.

    Each file is checked to be an image classifier taking pixels in [0, 1] (normalisation in the
    graph, as the page feeds them) and copied into ``own/`` in the models folder, where no published
    file lives; its menu name is its file stem, made unique against every model of the zoo and
    ``taken``. A copy whose bytes are already the source's is kept; the copies of earlier runs go.
    Reads ONNX metadata only: no torch.
    """
    models_dir = Path(models_dir)
    _own_manifest(models_dir)  # a folder whose models.json is not the demo's: refused before any work
    names, entries = set(taken) | set(list_models()), []
    with staged(models_dir) as stage:
        (stage / OWN_DIR).mkdir()
        for src in map(Path, files):
            entry = _own_entry(src, names, stage)
            names.add(entry.name)
            entries.append(entry)
        old = [f"{OWN_DIR}/{p.name}" for p in (models_dir / OWN_DIR).glob("*.onnx")] if (models_dir / OWN_DIR).is_dir() else []
        check_replaceable(models_dir, [*old, *(e.file for e in entries if e.file)], stage)
        move_in(stage, models_dir, [e.file for e in entries if e.file], replaces=old)
        _record_written(models_dir, [e.file for e in entries if e.file])
    return entries


def _own_entry(src: Path, names: set[str], stage: Path) -> DemoModel:
    """One of your files, checked as `aperture predict --onnx` checks it, copied into the stage's ``own/``."""
    import numpy as np
    import onnx

    from .export.predict import OnnxClassifier

    if not src.is_file():
        raise DemoError(f"{str(src)!r} does not exist; pass an .onnx file written by `aperture export --onnx`")
    try:  # the checks `aperture predict --onnx` makes: graph signature, metadata against it, calibrator
        clf = OnnxClassifier(src, provider="cpu")
    except ApertureError as exc:
        raise DemoError(str(exc)) from None
    meta = clf.metadata
    if "label_names" not in meta or "input" not in meta:
        raise DemoError(f"{str(src)!r} has no aperture_zoo metadata (class names, input shape); export it with "
                        "`aperture export NAME --weights FILE --onnx`")
    if not clf.normalize_in_graph:
        raise DemoError(f"{str(src)!r} was exported with --no-normalize; the page feeds pixels in [0, 1], so "
                        "export it again without that option")
    name, n = src.name.removesuffix(".onnx"), 2
    while name in names:
        name, n = f"{src.name.removesuffix('.onnx')}-{n}", n + 1
    source_sha = file_sha256(src)
    # a file name the page can fetch as it is (no '#', '?', '/'), unique by content
    target = f"{OWN_DIR}/{re.sub(r'[^A-Za-z0-9._-]', '_', name)[:60]}-{source_sha[:12]}.onnx"
    copy_file(src, stage / target)
    if file_sha256(stage / target) != source_sha:
        raise DemoError(f"{str(src)!r} changed while it was copied; pass it again once it is written")
    graph = onnx.load(str(stage / target), load_external_data=False).graph
    params = sum(int(np.prod(t.dims)) for t in graph.initializer)
    tta = clf.tta == "flip"
    precision = meta.get("precision") if meta.get("precision") in PRECISIONS else "fp32"
    size = (stage / target).stat().st_size
    file = DemoFile(FLIP if tta and precision == "fp32" else precision, target, size, tta=tta,
                    **_calibration(clf), sha256=source_sha)
    return DemoModel(name=name, params=params, available=True, file=target, bytes=size,
                     weights_sha256=meta.get("weights_sha256"), **_model_facts(clf), files=[file],
                     precision=file.precision, source_sha256=source_sha)


def prepare_models(
    models_dir: str | os.PathLike[str],
    names: Iterable[str] | None = None,
    progress: Callable[[str], None] | None = None,
    data_dir: str | os.PathLike[str] | None = None,
) -> list[DemoModel]:
    """Export every model with published weights (``names``: a subset) and write ``models.json``.

    The files are reused while every one of them is still the file recorded (same SHA-256, exported
    from the same weights) and an int8 file is there when ``data_dir`` is given, so only the first
    run pays for the exports. Models without published weights are listed as such.
    """
    from .pretrained import model_from, unpublished_note
    from .summary import parameter_count
    from .weights import decode_metadata

    say = progress or (lambda _msg: None)
    models_dir = Path(models_dir)
    wanted = list(names) if names is not None else list_models()
    for name in wanted:
        get_spec(name)  # unknown names fail here, with suggestions
    _own_manifest(models_dir)  # a folder whose models.json is not the demo's: refused before any export
    previous = _read_manifest(models_dir)
    entries = []
    for name in list_models():
        weights = published_weights(name) if name in wanted else None
        if weights is None:
            reason = NO_WEIGHTS if name in wanted else "not selected for this demo"
            entries.append(DemoModel(name=name, params=parameter_count(name), available=False, reason=reason))
            continue
        sha = weights.sha256
        old = previous.get(name)
        if _reusable(old, models_dir, sha, data_dir):
            say(f"{name}: up to date ({', '.join(f['file'] for f in old['files'])})")  # type: ignore[index]
            known = {f.name for f in fields(DemoModel)}
            entry = _from_files(DemoModel(**{k: v for k, v in old.items() if k in known}), models_dir)  # type: ignore[union-attr]
        else:
            say(f"{name}: exporting to ONNX fp32, fp16{', int8' if data_dir else ''}, fp32-flip (once; later runs reuse them)")
            entry = export_for_demo(model_from(weights), models_dir, sha, data_dir=data_dir)
        entry.top1 = decode_metadata(weights.metadata).get("test_top1")  # the file's own record, as its labels are
        entry.weights_note = unpublished_note(weights)
        entries.append(entry)
    write_manifest(models_dir, entries)
    return entries
