"""Provenance for every export format, not only ONNX: the hash of a model that is several files (an
OpenVINO IR's .xml + .bin, a Core ML .mlpackage folder), report names, and the card and ``check_folder``
refusing a stale report or model of each format.

Fast: small fake model files stand for the real ones (no tool chain or runtime is needed to judge a join
by hash); ``tests/test_formats_runtimes.py`` checks the same joins on real exports.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from typer.testing import CliRunner

from aperture_zoo.cli import app
from aperture_zoo.files import (MODEL_SUFFIXES, OTHER_MODEL_SUFFIXES, file_sha256, judged_file, model_sha256,
                                report_name)
from aperture_zoo.model import create_model
from aperture_zoo.provenance import StaleFileError, check_folder, check_runtimes
from aperture_zoo.weights import save_weights

# format -> (the model's name, precision, the runtime named in its report)
FILES = {
    "openvino": ("resnet10.xml", "fp32", "openvino 2026.4.1 CPU f32"),
    "executorch": ("resnet10.int8.pte", "int8", "executorch 1.0 XNNPACK"),
    "tflite": ("resnet10.tflite", "fp32", "litert 2.3.0 CPU"),
    "coreml": ("resnet10.fp16.mlpackage", "fp16", "not run: Core ML runs on Apple systems only"),
}


def _fake_model(path: Path, content: bytes = b"graph") -> Path:
    """Bytes standing for an exported model of ``path``'s format (every part of it)."""
    if path.suffix == ".mlpackage":
        (path / "Data" / "com.apple.CoreML" / "weights").mkdir(parents=True)
        (path / "Manifest.json").write_bytes(b'{"root": "model"}')
        (path / "Data" / "com.apple.CoreML" / "model.mlmodel").write_bytes(content)
        (path / "Data" / "com.apple.CoreML" / "weights" / "weight.bin").write_bytes(b"w" * 64)
    else:
        path.write_bytes(content)
        if path.suffix == ".xml":
            path.with_suffix(".bin").write_bytes(b"w" * 64)
    return path


def _report(model: Path, fmt: str, weights_sha256: str) -> Path:
    """The report ``export_formats`` writes beside ``model``: the exact model's hash and the weights'."""
    from aperture_zoo.export.reports import Comparison, Tolerance, ValidationReport, report_path

    name, precision, runtime = FILES[fmt]
    ran = fmt != "coreml"
    report = ValidationReport(onnx_file=str(model), arch="resnet10", precision=precision, provider=runtime,
                              tolerance=Tolerance(max_abs=1e-4) if ran else Tolerance(), ran=ran,
                              onnx_sha256=model_sha256(model), weights_sha256=weights_sha256)
    if ran:
        report.comparisons.append(Comparison("CIFAR-10 test", 2000, 3e-6, 1e-6, 100.0, 94.6, 94.6))
    return report.write_json(report_path(model))


@pytest.fixture
def folder(tmp_path: Path) -> tuple[Path, str]:
    """A card folder: small resnet10 weights, and one fake model of each other format with its report."""
    torch.manual_seed(0)
    model = create_model("resnet10", channels=(8, 16, 16, 32)).eval()
    save_weights(model, tmp_path / "model.safetensors", {"test_top1": 50.0})
    sha = file_sha256(tmp_path / "model.safetensors")
    for fmt, (name, _, _) in FILES.items():
        _report(_fake_model(tmp_path / name), fmt, sha)
    return tmp_path, sha


def _one_line(output: str) -> str:
    lines = [line for line in output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in output, output
    return lines[0]


def test_the_model_suffixes_are_the_format_tables() -> None:
    from aperture_zoo.export.formats import FORMATS

    assert sorted(f.suffix for f in FORMATS.values()) == sorted(MODEL_SUFFIXES)


def test_an_ir_is_hashed_with_its_weights_and_a_package_with_every_file(tmp_path: Path) -> None:
    xml = _fake_model(tmp_path / "a.xml")
    before = model_sha256(xml)
    assert before != file_sha256(xml)  # the graph alone says nothing of the weights beside it
    xml.with_suffix(".bin").write_bytes(b"v" * 64)
    after = model_sha256(xml)
    assert after != before
    moved = tmp_path / "b.xml"
    xml.rename(moved)
    (tmp_path / "a.bin").rename(moved.with_suffix(".bin"))
    assert model_sha256(moved) == after  # a renamed pair keeps its hash
    moved.with_suffix(".bin").unlink()
    with pytest.raises(FileNotFoundError):  # an IR without its weights is no model
        model_sha256(moved)

    package = _fake_model(tmp_path / "m.mlpackage")
    seen = {model_sha256(package)}
    (package / "Data" / "com.apple.CoreML" / "weights" / "weight.bin").write_bytes(b"v" * 64)  # a byte inside
    seen.add(model_sha256(package))
    (package / "extra.txt").write_bytes(b"")  # a file added
    seen.add(model_sha256(package))
    (package / "extra.txt").rename(package / "other.txt")  # a file renamed
    seen.add(model_sha256(package))
    assert len(seen) == 4
    shutil.copytree(package, tmp_path / "copy.mlpackage")
    assert model_sha256(tmp_path / "copy.mlpackage") == model_sha256(package)  # the folder's own name never counts
    (package / "link").symlink_to("/etc/hostname")
    with pytest.raises(OSError, match="symbolic link inside the exported model"):
        model_sha256(package)


@pytest.mark.parametrize("name, report", [
    ("resnet22.onnx", "resnet22.report.json"), ("resnet22.int8.onnx", "resnet22.int8.report.json"),
    ("resnet22.int8.pte", "resnet22.int8.pte.report.json"), ("resnet22.bf16.xml", "resnet22.bf16.xml.report.json"),
    ("resnet22.FAILED.tflite", "resnet22.FAILED.tflite.report.json"),
    ("resnet22.fp16.mlpackage", "resnet22.fp16.mlpackage.report.json"),
])
def test_report_names_of_every_format(name: str, report: str) -> None:
    from aperture_zoo.export.reports import report_path

    assert report_name(name) == report and judged_file(report) == name
    assert report_path(Path("out") / name) == Path("out") / report


@given(stem=st.text(st.characters(blacklist_characters="/\x00", blacklist_categories=("Cs",)), min_size=1),
       suffix=st.sampled_from(MODEL_SUFFIXES))
def test_a_reports_name_gives_back_its_models_name(stem: str, suffix: str) -> None:
    assume(not stem.endswith(OTHER_MODEL_SUFFIXES) and stem not in (".", ".."))  # "a.xml.onnx" reads as a.xml's
    assert judged_file(report_name(stem + suffix)) == stem + suffix


def test_check_folder_checks_every_formats_model_and_report(folder: tuple[Path, str]) -> None:
    path, sha = folder
    checked = check_folder(path, sha, "resnet10")
    assert sorted(checked.reports) == sorted(name for name, _, _ in FILES.values()) == sorted(checked.model_files)
    assert checked.onnx_files == []


def _change(model: Path) -> None:
    """One byte of the model's weights part changed after its report was written."""
    part = (model / "Data" / "com.apple.CoreML" / "model.mlmodel" if model.is_dir()
            else model.with_suffix(".bin") if model.suffix == ".xml" else model)
    part.write_bytes(part.read_bytes() + b"!")


@pytest.mark.parametrize("fmt", list(FILES))
def test_a_stale_model_or_report_of_each_format_is_refused(folder: tuple[Path, str], fmt: str) -> None:
    from aperture_zoo.cards import write_card

    path, sha = folder
    model = path / FILES[fmt][0]
    report = path / report_name(model.name)
    write_card("resnet10", path)
    card = (path / "README.md").read_text()
    _change(model)  # the model changed: its report judged other bytes
    stale = rf"{report.name}' judged a file with SHA-256 .* not .*{model.name}'.*the report is stale"
    with pytest.raises(StaleFileError, match=stale):
        check_folder(path, sha, "resnet10")
    with pytest.raises(StaleFileError, match=stale):
        write_card("resnet10", path)
    result = CliRunner().invoke(app, ["card", "resnet10", "--out", str(path)])
    assert result.exit_code == 2 and f"--format {fmt}" in _one_line(result.output)
    assert (path / "README.md").read_text() == card  # a refused card leaves the old one as it was

    _report(model, fmt, "0" * 64)  # a report of this model, judged against other weights
    with pytest.raises(StaleFileError, match=r"judged a file made from other weights"):
        check_folder(path, sha, "resnet10")
    shutil.rmtree(model) if model.is_dir() else model.unlink()  # the report alone still names other weights
    with pytest.raises(StaleFileError, match=r"judged a file made from other weights"):
        write_card("resnet10", path)

    data = json.loads(_report(_fake_model(model), fmt, sha).read_text())
    del data["onnx_sha256"]  # a report from before the record: nothing shows what it judged
    report.write_text(json.dumps(data))
    with pytest.raises(StaleFileError, match="records no SHA-256 of the file it judged"):
        write_card("resnet10", path)
    report.unlink()  # a model alone: only its runtime reads the weights it records
    with pytest.raises(StaleFileError, match=rf"{model.name}' has no validation report beside it"):
        check_folder(path, sha, "resnet10")


def test_the_card_lists_every_formats_file_with_the_hash_it_judged(folder: tuple[Path, str]) -> None:
    from aperture_zoo.cards import write_card

    path, sha = folder
    write_card("resnet10", path)
    readme = (path / "README.md").read_text()
    assert "## Exported files: parity with PyTorch" in readme
    xml = model_sha256(path / "resnet10.xml")
    assert f"resnet10.xml (openvino fp32, openvino 2026.4.1 CPU f32, SHA-256 `{xml}`): validation passed" in readme
    package = model_sha256(path / "resnet10.fp16.mlpackage")
    assert (f"resnet10.fp16.mlpackage (coreml fp16, SHA-256 `{package}`): not run: Core ML runs on Apple systems "
            "only: passed.") in readme
    assert "| CIFAR-10 test | 2,000 | 3e-06 | 100 | 94.6 | 94.6 |" in readme
    assert "- onnx" not in readme  # no ONNX file here: the Hub tag says what there is


def test_a_runtime_matrix_cell_names_the_whole_model(folder: tuple[Path, str]) -> None:
    path, sha = folder
    xml = path / "resnet10.xml"
    cell = {"runtime": "openvino-ir", "precision": "fp32", "file": xml.name, "sha256": model_sha256(xml)}
    (path / "runtimes.json").write_text(json.dumps({"weights_sha256": sha, "cells": [cell]}))
    check_runtimes(path / "runtimes.json", sha, path)
    xml.with_suffix(".bin").write_bytes(b"other weights")  # the .xml is the same; the model is not
    with pytest.raises(StaleFileError, match=r"measured a resnet10\.xml with SHA-256"):
        check_runtimes(path / "runtimes.json", sha, path)


def test_the_runtime_matrix_refuses_a_format_file_of_other_weights_before_running(folder: tuple[Path, str]) -> None:
    from aperture_zoo.export.format_matrix import check_format_files

    path, sha = folder
    files = {"litert": {"fp32": path / "resnet10.tflite"}, "executorch": {"int8": path / "resnet10.int8.pte"}}
    check_format_files(files, sha, "resnet10")
    _report(path / "resnet10.tflite", "tflite", "1" * 64)
    with pytest.raises(StaleFileError, match=r"resnet10\.tflite\.report\.json' judged a file made from other weights"):
        check_format_files(files, sha, "resnet10")


# -- each command that meets a format's file refuses a stale one in one line (exit 2) ------------------
class _MetaOnly:
    """A runtime session that only answers what predict reads before its first image (the metadata)."""

    def __init__(self, meta: dict[str, str]) -> None:
        from aperture_zoo.export.sessions import ModelMeta

        self.meta = ModelMeta(meta)

    def get_modelmeta(self):
        return self.meta

    def get_providers(self):
        return ["fake runtime"]


@pytest.mark.parametrize("fmt", ["openvino", "executorch", "tflite"])
def test_predict_refuses_a_file_its_report_did_not_judge(folder: tuple[Path, str], fmt: str, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """An IR whose .bin came from another export, a program or flatbuffer changed under its report, or one
    recording other weights than its report judged: predict answers nothing rather than vouch for it."""
    from PIL import Image

    from aperture_zoo.export import sessions

    path, sha = folder
    model = path / FILES[fmt][0]
    meta = {"weights_sha256": sha}
    monkeypatch.setattr(sessions, "open_session", lambda *a, **k: _MetaOnly(meta))
    image = tmp_path / "cat.png"
    Image.new("RGB", (32, 32)).save(image)
    _change(model)  # another export's parts, or bytes changed: the report judged other bytes
    result = CliRunner().invoke(app, ["predict", str(image), "--file", str(model)])
    assert result.exit_code == 2 and f"is not the file its report {report_name(model.name)} judged" in \
        _one_line(result.output)
    _report(model, fmt, "1" * 64)  # judged these bytes, but against other weights than the file records
    result = CliRunner().invoke(app, ["predict", str(image), "--file", str(model)])
    assert result.exit_code == 2 and "records weights" in _one_line(result.output) and "it is stale" in result.output


@pytest.mark.parametrize("fmt", list(FILES))
def test_validation_fails_a_file_of_other_weights(fmt: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``validate`` (and Core ML's spec check) reads the weights the file itself records, in any format."""
    from aperture_zoo.export import coreml_export, sessions
    from aperture_zoo.export.format_export import format_metadata

    torch.manual_seed(0)
    model = create_model("resnet10", channels=(8, 16, 16, 32)).eval()
    meta = format_metadata(model, fmt, "fp32", weights_sha256="2" * 64, temperature=None, tta=False)
    path = _fake_model(tmp_path / FILES[fmt][0].replace(f".{FILES[fmt][1]}", ""))
    if fmt == "coreml":
        from aperture_zoo.export.spec_check import spec_report

        monkeypatch.setattr(coreml_export, "read_coreml_metadata", lambda p: meta)
        monkeypatch.setattr(coreml_export, "check_coreml", lambda *a: [])
        report = spec_report(path, model, "3" * 64)
    else:
        from aperture_zoo.export.validate import validate

        monkeypatch.setattr(sessions, "open_session", lambda *a, **k: _Wrapped(model, meta))
        report = validate(path, model, batch_sizes=(2,), weights_sha256="3" * 64)
    assert not report.passed and report.failures[0] == (f"{path.name} was exported from other weights (SHA-256 "
                                                        f"{'2' * 12}...) than the model it is compared with "
                                                        f"({'3' * 12}...)")
    assert report.onnx_sha256 == model_sha256(path) and report.weights_sha256 == "3" * 64


class _Wrapped(_MetaOnly):
    """A session that runs the model's own export module: the numbers agree, only the weights' record differs."""

    def __init__(self, model, meta: dict[str, str]) -> None:
        from aperture_zoo.export.format_export import wrapper
        from aperture_zoo.export.sessions import Port

        super().__init__(meta)
        self.module = wrapper(model, calibrator=None, tta=False)
        self.ports = [Port("pixel_values", ["N", 3, 32, 32])], [Port("logits", ["N", 10]), Port("probabilities", ["N", 10])]

    def get_inputs(self):
        return self.ports[0]

    def get_outputs(self):
        return self.ports[1]

    def run(self, names, feed):
        with torch.no_grad():
            return [t.numpy() for t in self.module(torch.from_numpy(next(iter(feed.values()))))]


@pytest.mark.parametrize("fmt", list(FILES))
def test_push_refuses_a_stale_report_of_each_format_before_uploading(folder: tuple[Path, str], fmt: str) -> None:
    """The reports beside the weights go up with them: one that judged other bytes or weights stops the push."""
    path, sha = folder
    model = path / FILES[fmt][0]
    args = ["push", "resnet10", "--repo-id", "zoo/formats10", "--weights", str(path / "model.safetensors"),
            "--token", "tok"]
    _change(model)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "the report is stale" in _one_line(result.output)
    assert f"--format {fmt}" in result.output
    _report(model, fmt, "4" * 64)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "judged a file made from other weights" in _one_line(result.output)


@pytest.mark.parametrize("fmt", list(FILES))
def test_a_run_card_refuses_a_leftover_model_of_each_format_it_cannot_vouch_for(folder: tuple[Path, str],
                                                                                  fmt: str) -> None:
    """A model already in the card's folder stays only if it is shown to be of these weights (by its report)."""
    path, _ = folder
    out = path / "card"
    out.mkdir()
    _fake_model(out / FILES[fmt][0])  # no report: nothing shows which weights it was made from
    result = CliRunner().invoke(app, ["card", "resnet10", "--run", str(path), "--out", str(out)])
    assert result.exit_code == 2 and "has no validation report beside it" in _one_line(result.output)
    assert not (out / "README.md").exists()


def test_every_formats_files_are_one_set_none_arrive_if_one_fails(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The ONNX files of an export that also writes other formats wait in the stage with them: a tool chain
    failing on the last format leaves the folder as it was (no new ONNX beside an old set)."""
    from aperture_zoo.export import format_export, formats
    from aperture_zoo.export.pipeline import export_formats

    def broken(model, fmt, precision, path, **_):
        raise RuntimeError(f"the {fmt} tool chain crashed")

    monkeypatch.setattr(formats, "require", lambda name, purpose="export": formats.FORMATS[name])
    monkeypatch.setattr(format_export, "export_file", broken)
    torch.manual_seed(0)
    model = create_model("resnet10", channels=(8, 16, 16, 32)).eval()
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("an earlier file")
    with pytest.raises(RuntimeError, match="executorch tool chain crashed"):
        export_formats(model, out, {"onnx": ["fp32"], "executorch": ["fp32"]}, run_validation=False,
                       exporter="legacy")
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
