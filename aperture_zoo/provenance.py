"""Which file was made from which: the one check every reader of an export's files makes.

An exported model records the SHA-256 of the weights it was exported from (``weights_sha256``) in its
own format's metadata: an ONNX file's metadata props, an OpenVINO IR's ``rt_info``, an ExecuTorch
program's metadata method, a LiteRT flatbuffer's metadata table, a Core ML package's user metadata. A
validation report (``resnet22.report.json``, ``resnet22.int8.pte.report.json``: ``files.report_name``)
records the SHA-256 of the exact model it judged (``onnx_sha256``, by ``files.model_sha256``: an IR's
``.xml`` and ``.bin`` together, a package folder's every file) and of the weights (``weights_sha256``);
so does the runtime matrix (``runtimes.json``: ``weights_sha256``, and ``sha256`` per cell). Every
reader that ships these files together or shows "validation passed" (the card, ``aperture push
--with-onnx``, the demo, ``aperture runtimes --onnx-dir``) checks the join here, by content, and refuses
a stale one in one line naming the file and the fix: a name, a size or a neighbour proves nothing.

An ONNX file's own metadata is read here (onnx is always installed). The other formats' metadata is
read only by their runtimes, which a reader may not have: validation compared it with the weights when
the report was written (``validate`` fails a file of other weights), so such a file is shown to belong
to the weights by its report, which must name its exact bytes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ApertureError
from .files import (CURVES_FILENAME, EVAL_FILENAME, FIGURE_FILES, FIGURE_KEY_PREFIX, MODEL_SUFFIXES, ONNX_SUFFIX,
                    REPORT_SUFFIX, RUNTIMES_FILENAME, judged_file, model_exists, model_sha256, read_json, report_name)


class StaleFileError(ApertureError, ValueError):
    """A derived file (ONNX, report, runtime matrix) that was not made from what it sits beside."""


def _fix(name: str, fmt: str = "--onnx") -> str:
    return f"export it again from these weights (aperture export {name} {fmt} ...), or remove it"


def _format_flag(path: str | os.PathLike[str]) -> str:
    """The export option that writes a file like ``path`` (for the fix a refusal names)."""
    suffix = Path(path).suffix
    return {".xml": "--format openvino", ".pte": "--format executorch", ".tflite": "--format tflite",
            ".mlpackage": "--format coreml"}.get(suffix, "--onnx")


def _short(sha: object) -> str:
    return f"{str(sha)[:12]}..." if sha else "none recorded"


def onnx_weights_sha256(path: str | os.PathLike[str]) -> str | None:
    """The ``weights_sha256`` an ONNX file's metadata records (None: it records none)."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - the parser raises several types for bytes that are not ONNX
        raise StaleFileError(f"{str(path)!r} is not an ONNX file ({str(exc)[:80]}); export it again "
                             "(aperture export NAME --onnx)") from None
    return next((p.value for p in proto.metadata_props if p.key == "weights_sha256"), None)


def check_onnx(path: str | os.PathLike[str], weights_sha256: str, name: str = "NAME") -> None:
    """``path`` was exported from the weights whose SHA-256 is ``weights_sha256``, or StaleFileError."""
    recorded = onnx_weights_sha256(path)
    if recorded != weights_sha256:
        raise StaleFileError(f"{str(path)!r} was exported from other weights (SHA-256 {_short(recorded)}), not these "
                             f"({_short(weights_sha256)}): it is stale; {_fix(name)}")


def check_report(path: str | os.PathLike[str], weights_sha256: str, onnx_file: str | os.PathLike[str] | None = None,
                 name: str = "NAME") -> dict[str, Any]:
    """A validation report that judged these weights (and, when the model ``onnx_file`` of any format
    exists, exactly its bytes: ``files.model_sha256``)."""
    fix = _fix(name, _format_flag(judged_file(Path(path).name)))
    report = read_json(path, fix, StaleFileError)
    if not isinstance(report, dict) or not report.get("onnx_sha256") or not report.get("weights_sha256"):
        raise StaleFileError(f"{str(path)!r} records no SHA-256 of the file it judged and of its weights (an older "
                             f"export), so nothing shows it describes these; {fix}")
    if onnx_file is not None and model_exists(onnx_file):  # the model beside it: the exact bytes, then its weights
        got = _model_sha256(onnx_file, fix)
        if got != report["onnx_sha256"]:
            raise StaleFileError(f"{str(path)!r} judged a file with SHA-256 {_short(report['onnx_sha256'])}, not "
                                 f"{str(onnx_file)!r} ({_short(got)}): the report is stale; {fix}")
        if Path(onnx_file).suffix == ONNX_SUFFIX:
            check_onnx(onnx_file, weights_sha256, name)
    if report["weights_sha256"] != weights_sha256:
        raise StaleFileError(f"{str(path)!r} judged a file made from other weights (SHA-256 "
                             f"{_short(report['weights_sha256'])}), not these ({_short(weights_sha256)}): it is stale; "
                             f"{fix}")
    return report


def _model_sha256(path: str | os.PathLike[str], fix: str) -> str:
    try:
        return model_sha256(path)
    except OSError as exc:  # a link inside a package, a part unreadable
        raise StaleFileError(f"{str(path)!r} cannot be hashed ({exc}); {fix}") from None


def check_model(path: str | os.PathLike[str], weights_sha256: str, name: str = "NAME") -> dict[str, Any] | None:
    """An exported model of any format shown to be of these weights: an ONNX file by its own metadata
    (and its report, if one is beside it), any other format by its report beside it, which must name its
    exact bytes (only that format's runtime reads the weights it records). Its report, or None."""
    path = Path(path)
    report = path.with_name(report_name(path.name))
    if path.suffix == ONNX_SUFFIX:
        check_onnx(path, weights_sha256, name)
        return check_report(report, weights_sha256, path, name) if report.is_file() else None
    if not report.is_file():
        raise StaleFileError(f"{str(path)!r} has no validation report beside it ({report.name}), and only its runtime "
                             "reads the weights it records, so nothing here shows it was made from these weights; "
                             f"{_fix(name, _format_flag(path))} (with validation)")
    return check_report(report, weights_sha256, path, name)


def other_weights(path: str | os.PathLike[str], metadata: dict[str, str], weights_sha256: str,
                  known: bool) -> str | None:
    """The failure a validation records when the model ``path`` (any format) says, in its own metadata,
    that it was exported from other weights than the reference's ``weights_sha256`` (None: it was not).

    ``known``: the reference's hash is of a weights file (not made up from its state dict), or the file
    records a state-dict hash too; otherwise the two hashes are of different things and prove nothing.
    """
    recorded = metadata.get("weights_sha256")
    if recorded is None or not (known or metadata.get("weights_sha256_of") == "state_dict") or recorded == weights_sha256:
        return None
    return (f"{Path(path).name} was exported from other weights (SHA-256 {_short(recorded)}) than the model it is "
            f"compared with ({_short(weights_sha256)})")


def check_own_report(path: str | os.PathLike[str], recorded_weights: str | None = None) -> dict[str, Any] | None:
    """A model of any format as a reader finds it (``aperture predict --file``): the file is its own model,
    but the validation report beside it, if there is one, must have judged exactly these bytes (an IR's
    ``.xml`` with its ``.bin``, a package's every file) and the weights the file itself records
    (``recorded_weights``); else a ``passed`` there vouches for another export, or an IR's ``.bin`` came
    from one. Its report, or None when there is none."""
    path = Path(path)
    report = path.with_name(report_name(path.name))
    if not report.is_file():
        return None
    fix = f"export it again (aperture export NAME {_format_flag(path)} ...), or remove {report.name}"
    data = read_json(report, fix, StaleFileError)
    judged = data.get("onnx_sha256") if isinstance(data, dict) else None
    if not judged or not data.get("weights_sha256"):
        raise StaleFileError(f"{str(report)!r} records no SHA-256 of the file it judged (an older export), so "
                             f"nothing shows it describes {path.name}; {fix}")
    got = _model_sha256(path, fix)
    if got != judged:
        raise StaleFileError(f"{str(path)!r} ({_short(got)}) is not the file its report {report.name} judged "
                             f"({_short(judged)}): it was changed, or mixed with another export's parts; {fix}")
    if recorded_weights is not None and recorded_weights != data["weights_sha256"]:
        raise StaleFileError(f"{str(path)!r} records weights {_short(recorded_weights)}, but its report "
                             f"{report.name} judged weights {_short(data['weights_sha256'])}: it is stale; {fix}")
    return data


def check_runtimes(path: str | os.PathLike[str], weights_sha256: str, folder: str | os.PathLike[str] | None = None,
                   name: str = "NAME") -> dict[str, Any]:
    """A runtime matrix measured on files of these weights (and on the bytes of those files in ``folder``)."""
    matrix = read_json(path, _fix(name), StaleFileError)
    if not isinstance(matrix, dict) or matrix.get("weights_sha256") != weights_sha256:
        recorded = matrix.get("weights_sha256") if isinstance(matrix, dict) else None
        raise StaleFileError(f"{str(path)!r} measured files of other weights (SHA-256 {_short(recorded)}), not these "
                             f"({_short(weights_sha256)}): it is stale; run the matrix again (aperture runtimes {name} "
                             "... -o FILE), or remove it")
    for cell in matrix.get("cells") or []:
        local = Path(folder) / str(cell.get("file", "")) if folder is not None and cell.get("file") else None
        if local is not None and model_exists(local) and _model_sha256(local, "run the matrix again") != cell.get("sha256"):
            raise StaleFileError(f"{str(path)!r} measured a {cell.get('file')} with SHA-256 {_short(cell.get('sha256'))}, "
                                 f"not the one beside it: it is stale; run the matrix again (aperture runtimes {name} "
                                 "--onnx-dir ... -o FILE)")
    return matrix


@dataclass
class CheckedFolder:
    """What a folder holds beside its weights, every join checked: model file name (any format) -> its report."""

    reports: dict[str, dict[str, Any]] = field(default_factory=dict)
    onnx_files: list[str] = field(default_factory=list)   # the ONNX files there
    model_files: list[str] = field(default_factory=list)  # every exported model there, ONNX included
    runtimes: dict[str, Any] | None = None
    eval: dict[str, Any] | None = None


def check_eval(path: str | os.PathLike[str], weights_sha256: str, name: str = "NAME") -> dict[str, Any]:
    """An ``eval.json`` that evaluated these weights (one that records no SHA-256 predates the record)."""
    ev = read_json(path, f"evaluate the weights again (aperture eval {name} --weights ... -o FOLDER)", StaleFileError)
    recorded = ev.get("weights_sha256") if isinstance(ev, dict) else None
    if not isinstance(ev, dict) or (recorded is not None and recorded != weights_sha256):
        raise StaleFileError(f"{str(path)!r} evaluated other weights (SHA-256 {_short(recorded)}), not these "
                             f"({_short(weights_sha256)}): it is stale; evaluate these weights again (aperture eval "
                             f"{name} --weights ...), or remove it")
    return ev


def check_figure(path: str | os.PathLike[str], weights_sha256: str, name: str = "NAME",
                 eval_file: str | os.PathLike[str] | None = None) -> None:
    """A figure (curves.png, confusion.png, reliability.png) drawn for these weights, and (where it records
    one and ``eval_file`` exists) from exactly that eval.json's bytes: its PNG text chunks say so. One that
    records nothing (drawn before figures recorded it) is refused, not redrawn: nothing shows what it shows."""
    import struct
    import zlib

    from PIL import Image, UnidentifiedImageError

    from .files import file_sha256

    path = Path(path)
    fix = ("it is drawn when training ends: remove it, or write the card from the run folder that trained these "
           "weights" if path.name == CURVES_FILENAME else f"evaluate these weights again (aperture eval {name} --weights ... -o FOLDER), or remove it")
    try:  # only the chunks before the pixels are read: no decoding
        with Image.open(path) as image:
            info = {k: v for k, v in image.info.items() if isinstance(k, str) and isinstance(v, str)}
    except (OSError, EOFError, UnidentifiedImageError, ValueError, SyntaxError, struct.error, zlib.error):
        raise StaleFileError(f"{str(path)!r} is not a PNG figure; {fix}") from None
    recorded = info.get(FIGURE_KEY_PREFIX + "weights_sha256")
    if recorded is None:
        raise StaleFileError(f"{str(path)!r} records no SHA-256 of the weights it was drawn for (drawn by an older "
                             f"version), so nothing shows it belongs to these; refused, not redrawn: {fix}")
    if recorded != weights_sha256:
        raise StaleFileError(f"{str(path)!r} was drawn for other weights (SHA-256 {_short(recorded)}), not these "
                             f"({_short(weights_sha256)}): it is stale; {fix}")
    drawn_from = info.get(FIGURE_KEY_PREFIX + "eval_sha256")
    if drawn_from is not None and eval_file is not None and Path(eval_file).is_file() \
            and file_sha256(eval_file) != drawn_from:
        raise StaleFileError(f"{str(path)!r} was drawn from another evaluation ({_short(drawn_from)}) than the "
                             f"{Path(eval_file).name} beside it: it is stale; {fix}")


class ForeignFileError(ApertureError, ValueError):
    """A file in an output folder that this package did not write: replacing it would lose it, so it never is."""


_OWN_JSON = ("weights_sha256", "onnx_sha256")  # eval.json, runtimes.json, reports: what they were made from


def written_by_aperture(path: str | os.PathLike[str]) -> bool:
    """Whether the existing file ``path`` is one this package writes, told by its content (the record of its
    source every written file carries), never by its name: a JSON file's ``weights_sha256``/``onnx_sha256`` (a
    ``weights.json``'s ``sha256`` and ``metadata``, a ``config.json``'s ``library``, an eval.json from before the
    record its ``top1`` and ``confusion``), a figure's PNG text chunks, an
    ONNX file's or weights' metadata, a training log's epoch rows. A kind read only by its own runtime (an
    OpenVINO IR, a ``.pte``, a Core ML package) is not judged here: its report names its bytes where it is read."""
    import json

    path = Path(path)
    suffix = path.suffix
    if path.is_dir() or suffix not in (".json", ".png", ".onnx", ".safetensors", ".jsonl"):
        return True
    try:
        if suffix == ".json":
            record = json.loads(path.read_bytes())
            return isinstance(record, dict) and (any(isinstance(record.get(k), str) for k in _OWN_JSON)
                                                 or ("sha256" in record and "metadata" in record)
                                                 or ("top1" in record and "confusion" in record)  # an older eval.json
                                                 or record.get("library") == "aperture_zoo")
        if suffix == ".jsonl":
            first = next((line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()), "{}")
            return isinstance(row := json.loads(first), dict) and "epoch" in row
        if suffix == ".png":
            from PIL import Image

            with Image.open(path) as image:
                return isinstance(image.info.get(FIGURE_KEY_PREFIX + "weights_sha256"), str)
        if suffix == ".onnx":
            return onnx_weights_sha256(path) is not None
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as f:
            return "arch" in (f.metadata() or {})
    except Exception:  # noqa: BLE001 - bytes that are not the kind their name says: not a file this package wrote
        return False


def refuse_foreign(folder: str | os.PathLike[str], names: Any, writer: str, fix: str) -> None:
    """Nothing is lost: each of ``names`` already in ``folder`` is replaced only if this package wrote it
    (``written_by_aperture``); any other (the user's own, another tool's) is refused in one line, naming it."""
    for name in dict.fromkeys(names):
        path = Path(folder) / name
        if path.exists() and not written_by_aperture(path):
            raise ForeignFileError(f"{str(path)!r} is not a file aperture wrote (yours, or another tool's), and {writer} "
                                   f"would replace it; move it aside, or write elsewhere ({fix})")


def check_folder(folder: str | os.PathLike[str], weights_sha256: str, name: str = "NAME", *,
                 onnx_files: bool = True) -> CheckedFolder:
    """Every exported model of any format (unless ``onnx_files`` is False: the models stay behind),
    validation report, runtime matrix and ``eval.json`` in ``folder``, each shown to belong to the
    weights ``weights_sha256`` (a report also to the bytes of its model, where that model is there)."""
    folder = Path(folder)
    out = CheckedFolder()
    for report in sorted(folder.glob("*" + REPORT_SUFFIX)):
        judged = judged_file(report.name)
        out.reports[judged] = check_report(report, weights_sha256, folder / judged, name)
    models = sorted(p for suffix in MODEL_SUFFIXES for p in folder.glob("*" + suffix)) if onnx_files else []
    for model in models:
        check_model(model, weights_sha256, name)
        out.model_files.append(model.name)
        if model.suffix == ONNX_SUFFIX:
            out.onnx_files.append(model.name)
    if (folder / RUNTIMES_FILENAME).is_file():
        out.runtimes = check_runtimes(folder / RUNTIMES_FILENAME, weights_sha256, folder, name)
    if (folder / EVAL_FILENAME).is_file():
        out.eval = check_eval(folder / EVAL_FILENAME, weights_sha256, name)
    for figure in FIGURE_FILES:
        if (folder / figure).is_file():
            check_figure(folder / figure, weights_sha256, name, folder / EVAL_FILENAME)
    return out


def report_record(onnx_file: str | os.PathLike[str], weights_sha256: str) -> dict[str, str]:
    """The two hashes a report written about the model ``onnx_file`` (any format) records (see :func:`check_report`)."""
    return {"onnx_sha256": model_sha256(onnx_file), "weights_sha256": weights_sha256}


__all__ = ["CheckedFolder", "StaleFileError", "check_eval", "check_figure", "check_folder", "check_model",
           "check_onnx", "check_own_report", "check_report", "check_runtimes", "onnx_weights_sha256", "other_weights", "report_record"]
