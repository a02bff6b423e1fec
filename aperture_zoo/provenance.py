"""Which file was made from which: the one check every reader of an export's files makes.

An ONNX file records the SHA-256 of the weights it was exported from (``weights_sha256`` in its
metadata). A validation report (``<stem>.report.json``) records the SHA-256 of the exact file it
judged (``onnx_sha256``) and of the weights (``weights_sha256``); so does the runtime matrix
(``runtimes.json``: ``weights_sha256``, and ``sha256`` per cell). Every reader that ships these
files together or shows "validation passed" (the card, ``aperture push --with-onnx``, the demo,
``aperture runtimes --onnx-dir``) checks the join here, by content, and refuses a stale one in one
line naming the file and the fix: a name, a size or a neighbour proves nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ApertureError
from .files import EVAL_FILENAME, REPORT_SUFFIX, RUNTIMES_FILENAME, file_sha256, read_json


class StaleFileError(ApertureError, ValueError):
    """A derived file (ONNX, report, runtime matrix) that was not made from what it sits beside."""


def _fix(name: str) -> str:
    return f"export it again from these weights (aperture export {name} --onnx ...), or remove it"


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
    """A validation report that judged these weights (and, when ``onnx_file`` exists, exactly its bytes)."""
    report = read_json(path, _fix(name), StaleFileError)
    if not isinstance(report, dict) or not report.get("onnx_sha256") or not report.get("weights_sha256"):
        raise StaleFileError(f"{str(path)!r} records no SHA-256 of the file it judged and of its weights (an older "
                             f"export), so nothing shows it describes these; {_fix(name)}")
    if onnx_file is not None and Path(onnx_file).is_file():  # the file beside it: the exact bytes, then its weights
        got = file_sha256(onnx_file)
        if got != report["onnx_sha256"]:
            raise StaleFileError(f"{str(path)!r} judged a file with SHA-256 {_short(report['onnx_sha256'])}, not "
                                 f"{str(onnx_file)!r} ({_short(got)}): the report is stale; {_fix(name)}")
        check_onnx(onnx_file, weights_sha256, name)
    if report["weights_sha256"] != weights_sha256:
        raise StaleFileError(f"{str(path)!r} judged a file made from other weights (SHA-256 "
                             f"{_short(report['weights_sha256'])}), not these ({_short(weights_sha256)}): it is stale; "
                             f"{_fix(name)}")
    return report


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
        if local is not None and local.is_file() and file_sha256(local) != cell.get("sha256"):
            raise StaleFileError(f"{str(path)!r} measured a {cell.get('file')} with SHA-256 {_short(cell.get('sha256'))}, "
                                 f"not the one beside it: it is stale; run the matrix again (aperture runtimes {name} "
                                 "--onnx-dir ... -o FILE)")
    return matrix


@dataclass
class CheckedFolder:
    """What a folder holds beside its weights, every join checked: ONNX file name -> its report."""

    reports: dict[str, dict[str, Any]] = field(default_factory=dict)
    onnx_files: list[str] = field(default_factory=list)
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


def check_folder(folder: str | os.PathLike[str], weights_sha256: str, name: str = "NAME", *,
                 onnx_files: bool = True) -> CheckedFolder:
    """Every ONNX file (unless ``onnx_files`` is False), validation report, runtime matrix and
    ``eval.json`` in ``folder``, each shown to belong to the weights ``weights_sha256`` (a report also
    to the bytes of its file, where that file is there)."""
    folder = Path(folder)
    out = CheckedFolder()
    for report in sorted(folder.glob("*" + REPORT_SUFFIX)):
        judged = report.name.removesuffix(REPORT_SUFFIX) + ".onnx"
        out.reports[judged] = check_report(report, weights_sha256, folder / judged, name)
    for onnx_file in sorted(folder.glob("*.onnx")) if onnx_files else ():
        check_onnx(onnx_file, weights_sha256, name)
        out.onnx_files.append(onnx_file.name)
    if (folder / RUNTIMES_FILENAME).is_file():
        out.runtimes = check_runtimes(folder / RUNTIMES_FILENAME, weights_sha256, folder, name)
    if (folder / EVAL_FILENAME).is_file():
        out.eval = check_eval(folder / EVAL_FILENAME, weights_sha256, name)
    return out


def report_record(onnx_file: str | os.PathLike[str], weights_sha256: str) -> dict[str, str]:
    """The two hashes a report written about ``onnx_file`` records (see :func:`check_report`)."""
    return {"onnx_sha256": file_sha256(onnx_file), "weights_sha256": weights_sha256}


__all__ = ["CheckedFolder", "StaleFileError", "check_eval", "check_folder", "check_onnx", "check_report", "check_runtimes",
           "onnx_weights_sha256", "report_record"]
