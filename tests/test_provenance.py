"""Every export file records what it was made from, and every reader checks it by content.

The joins a reader trusts (a report beside an ONNX file, an ONNX file beside weights, a runtime
matrix beside both) are shown by SHA-256, never by a name or a neighbour; a file set is written
whole (stage, then move in under the folder's lock).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from aperture_zoo.cli import app
from aperture_zoo.export.pipeline import export_model
from aperture_zoo.files import file_sha256
from aperture_zoo.filesets import STAGE_PREFIX, _host
from aperture_zoo.model import create_model
from aperture_zoo.provenance import StaleFileError, check_folder, check_report
from aperture_zoo.weights import save_weights

KW = dict(exporter="legacy", provider="cpu")  # legacy: ~0.5 s an export; validation on random inputs only


def _weights(path: Path, seed: int) -> tuple[torch.nn.Module, str]:
    """A 25k-parameter resnet10 derivative saved as a weights file; (model, its file's SHA-256)."""
    torch.manual_seed(seed)
    model = create_model("resnet10", channels=(8, 16, 16, 32)).eval()
    save_weights(model, path, {"test_top1": 50.0})
    return model, file_sha256(path)


def _one_line(output: str) -> str:
    lines = [line for line in output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in output, output
    return lines[0]


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Weights A and B in their own folders, each with its validated export ``resnet10.onnx`` + report."""
    out = {}
    for key, seed in (("a", 0), ("b", 1)):
        folder = tmp_path_factory.mktemp(key)
        model, sha = _weights(folder / "model.safetensors", seed)
        export_model(model, folder, weights_sha256=sha, **KW)
        out[key] = dict(folder=folder, model=model, sha=sha)
    return out


def test_reports_record_the_file_they_judged_and_its_weights(two: dict) -> None:
    a = two["a"]
    report = json.loads((a["folder"] / "resnet10.report.json").read_text())
    assert report["onnx_sha256"] == file_sha256(a["folder"] / "resnet10.onnx")  # the file as shipped
    assert report["weights_sha256"] == a["sha"] and report["passed"]
    assert report["onnx_file"] == str(a["folder"] / "resnet10.onnx")  # where it lives, not the stage it was judged in
    checked = check_folder(a["folder"], a["sha"], "resnet10")
    assert list(checked.reports) == ["resnet10.onnx"] and checked.onnx_files == ["resnet10.onnx"]


def test_a_file_of_other_weights_never_passes_validation(two: dict) -> None:
    """Regression: two exports into one folder validated each other's files."""
    from aperture_zoo.export.validate import validate

    report = validate(two["a"]["folder"] / "resnet10.onnx", two["b"]["model"], provider="cpu",
                      weights_sha256=two["b"]["sha"])
    assert not report.passed and any("exported from other weights" in f for f in report.failures)


def test_card_refuses_a_stale_report_or_onnx_naming_it_and_the_fix(two: dict, tmp_path: Path) -> None:
    """Regression: a card said "validation passed" from a report about other bytes or other weights."""
    import shutil

    from aperture_zoo.cards import write_card

    folder = tmp_path / "card"
    shutil.copytree(two["a"]["folder"], folder)
    write_card("resnet10", folder)
    readme = (folder / "README.md").read_text()
    assert "validation passed" in readme and file_sha256(folder / "resnet10.onnx") in readme
    shutil.copyfile(two["b"]["folder"] / "resnet10.onnx", folder / "resnet10.onnx")  # same name, other file
    with pytest.raises(StaleFileError, match=r"resnet10\.report\.json' judged a file .* not .*resnet10\.onnx"):
        write_card("resnet10", folder)
    result = CliRunner().invoke(app, ["card", "resnet10", "--out", str(folder)])
    assert result.exit_code == 2 and "export it again from these weights" in _one_line(result.output)
    shutil.copyfile(two["b"]["folder"] / "resnet10.report.json", folder / "resnet10.report.json")  # B's pair
    with pytest.raises(StaleFileError, match=r"resnet10\.onnx' was exported from other weights"):
        write_card("resnet10", folder)
    (folder / "resnet10.onnx").unlink()  # B's report alone: it judged other weights
    with pytest.raises(StaleFileError, match=r"judged a file made from other weights"):
        write_card("resnet10", folder)
    assert (folder / "README.md").read_text() == readme  # a refused card leaves the old one as it was


def test_a_report_from_before_the_record_is_not_trusted(two: dict, tmp_path: Path) -> None:
    report = json.loads((two["a"]["folder"] / "resnet10.report.json").read_text())
    del report["onnx_sha256"], report["weights_sha256"]
    (tmp_path / "old.report.json").write_text(json.dumps(report))
    with pytest.raises(StaleFileError, match="records no SHA-256 of the file it judged"):
        check_report(tmp_path / "old.report.json", two["a"]["sha"])


def test_runtime_matrix_refuses_files_of_other_weights_before_running(two: dict) -> None:
    from aperture_zoo.export.matrix import measure_model

    with pytest.raises(StaleFileError, match="exported from other weights"):
        measure_model(two["a"]["model"], files={"fp32": two["b"]["folder"] / "resnet10.onnx"},
                      weights_sha256=two["a"]["sha"], runtimes=())
    result = CliRunner().invoke(app, ["runtimes", "resnet10", "--weights", str(two["a"]["folder"] / "model.safetensors"),
                                      "--onnx-dir", str(two["b"]["folder"]), "--runtimes", "ort"])
    assert result.exit_code == 2 and "resnet10.onnx' was exported from other weights" in _one_line(result.output)


def test_demo_shows_no_agreement_from_a_report_about_another_file(two: dict, tmp_path: Path) -> None:
    from aperture_zoo.demo import validation_agreement

    a, b = two["a"], two["b"]
    assert validation_agreement(a["folder"] / "resnet10.report.json", a["folder"] / "resnet10.onnx", a["sha"]) is None
    report = json.loads((a["folder"] / "resnet10.report.json").read_text())
    report["comparisons"].append({"inputs": "CIFAR-10 test", "agreement": 99.5, "num_images": 1000})
    figure = tmp_path / "figure.report.json"
    figure.write_text(json.dumps(report))
    assert validation_agreement(figure, a["folder"] / "resnet10.onnx", a["sha"]) == (99.5, 1000)
    assert validation_agreement(figure, b["folder"] / "resnet10.onnx", a["sha"]) is None  # another file's report
    assert validation_agreement(figure, a["folder"] / "resnet10.onnx", b["sha"]) is None  # other weights


# ------------------------------------------------------------------------------------ file sets written whole


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")}


def test_a_failed_export_leaves_the_previous_set_untouched(two: dict, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: an export interrupted during validation left new, unvalidated files beside the
    previous export's `passed` reports."""
    import shutil

    from aperture_zoo.export import pipeline

    folder = tmp_path / "out"
    shutil.copytree(two["a"]["folder"], folder)
    before = _snapshot(folder)

    def interrupted(*args, **kw):
        raise KeyboardInterrupt  # Ctrl-C (or a crash) in the middle of validation

    monkeypatch.setattr(pipeline, "validate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_model(two["b"]["model"], folder, weights_sha256=two["b"]["sha"], fp16=True, **KW)
    assert _snapshot(folder) == before  # no new file, no half-replaced pair
    assert not list(folder.glob(STAGE_PREFIX + "*"))


def test_a_killed_exports_stage_is_swept_by_the_next_writer(two: dict, tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stage = tmp_path / f"{STAGE_PREFIX}{_host()}-{int(dead.stdout)}-x1"
    stage.mkdir(parents=True)
    (stage / "resnet10.onnx").write_bytes(b"half an export")
    live = tmp_path / f"{STAGE_PREFIX}{_host()}-{os.getpid()}-x2"  # a writer still running: kept
    live.mkdir()
    export_model(two["a"]["model"], tmp_path, weights_sha256=two["a"]["sha"], run_validation=False, **KW)
    assert not stage.exists() and live.exists()
    assert check_folder(tmp_path, two["a"]["sha"]).onnx_files == ["resnet10.onnx"]


def test_two_exports_into_one_folder_leave_one_whole_set(two: dict, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: an export that ran while another validated replaced the file being judged, and the
    first export's `passed` report then stood beside the second's file."""
    from aperture_zoo.export import pipeline

    real = pipeline.validate
    others: list[str] = []

    def meanwhile(*args, **kw):  # another `aperture export` into the same folder runs during this validation
        if not others:
            others.append("b")
            export_model(two["b"]["model"], tmp_path, weights_sha256=two["b"]["sha"], **KW)
        return real(*args, **kw)

    monkeypatch.setattr(pipeline, "validate", meanwhile)
    result = export_model(two["a"]["model"], tmp_path, weights_sha256=two["a"]["sha"], **KW)
    assert others == ["b"] and result.passed
    report = json.loads((tmp_path / "resnet10.report.json").read_text())
    assert report["weights_sha256"] == two["a"]["sha"]  # the last set moved in, whole
    check_folder(tmp_path, two["a"]["sha"])  # its report, its file and its weights agree


def test_a_hub_folder_is_written_whole_and_keeps_no_stale_neighbour(two: dict, tmp_path: Path) -> None:
    from aperture_zoo.cards import write_folder

    out = tmp_path / "hub"
    write_folder("resnet10", out, two["a"]["folder"] / "model.safetensors", onnx=two["a"]["folder"] / "resnet10.onnx")
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "LICENSE", "README.md", "config.json", "model.onnx", "model.report.json", "model.safetensors",
        "weights.json"]  # resnet10.onnx's report goes once, as model.report.json (seventh hostile try, L3)
    assert check_folder(out, two["a"]["sha"]).onnx_files == ["model.onnx"]
    before = _snapshot(out)
    with pytest.raises(StaleFileError, match=r"model\.onnx' was exported from other weights"):  # A's file, B's card
        write_folder("resnet10", out, two["b"]["folder"] / "model.safetensors")
    assert _snapshot(out) == before  # refused before anything moved
