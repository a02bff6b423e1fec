"""`aperture export`, `aperture predict` and `aperture bench` end to end (typer's CliRunner)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from aperture_zoo.cli import app
from aperture_zoo.export.runtime import cuda_driver_present

runner = CliRunner()


@pytest.fixture(scope="module")
def exported(synthetic_cifar: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("cli_export")
    result = runner.invoke(app, [
        "export", "resnet10", "--random-init", "--onnx", "--out", str(out), "--exporter", "legacy",
        "--no-normalize", "--int8", "--data-dir", str(synthetic_cifar), "--calibration-images", "50",
        "--max-val-images", "50", "--provider", "cpu",
    ])
    return out, result.output if result.exit_code == 0 else f"exit {result.exit_code}: {result.output}"


def test_export_end_to_end(exported: tuple[Path, str]) -> None:
    out, output = exported
    assert not output.startswith("exit"), output
    for stem in ("resnet10", "resnet10.int8"):
        assert (out / f"{stem}.onnx").is_file()
        report = json.loads((out / f"{stem}.report.json").read_text())
        assert report["passed"] is True and report["provider"] == "CPUExecutionProvider"
        assert report["comparisons"][-1]["inputs"] == "CIFAR-10 test"
        assert report["comparisons"][-1]["num_images"] == 50
    assert json.loads((out / "resnet10.int8.report.json").read_text())["precision"] == "int8"
    assert "PASS" in output and "wrote" in output


def test_predict_cli_json(exported: tuple[Path, str], tmp_path: Path) -> None:
    out, _ = exported
    image = tmp_path / "big.png"
    Image.fromarray(np.full((100, 80, 3), 200, np.uint8)).save(image)
    result = runner.invoke(app, ["predict", str(image), "--onnx", str(out / "resnet10.onnx"), "--json", "--top-k", "2"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert len(payload) == 1 and len(payload[0]["top"]) == 2
    assert abs(sum(t["probability"] for t in payload[0]["top"])) <= 1.0 + 1e-6
    assert "resized 80x100 to 32x32" in result.stderr


def test_predict_cli_errors(exported: tuple[Path, str], tmp_path: Path) -> None:
    out, _ = exported
    result = runner.invoke(app, ["predict", str(tmp_path / "missing.png"), "--onnx", str(out / "resnet10.onnx")])
    assert result.exit_code == 2 and "does not exist" in result.stderr
    result = runner.invoke(app, ["predict", str(tmp_path / "x.png"), "--onnx", str(tmp_path / "none.onnx")])
    assert result.exit_code == 2 and "aperture export" in result.stderr


def test_export_needs_weights_choice(tmp_path: Path) -> None:
    result = runner.invoke(app, ["export", "resnet10", "--onnx", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "--weights PATH" in result.stderr and "--random-init" in result.stderr


def test_export_needs_data_for_int8(tmp_path: Path) -> None:
    result = runner.invoke(app, ["export", "resnet10", "--random-init", "--onnx", "--int8", "--out", str(tmp_path),
                                 "--data-dir", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and "CIFAR-10 not found" in result.stderr
    assert not list(tmp_path.glob("*.onnx"))  # failed before exporting anything


@pytest.mark.skipif(cuda_driver_present(), reason="a CUDA driver is present on this machine")
def test_export_provider_cuda_without_cuda(exported: tuple[Path, str], tmp_path: Path) -> None:
    result = runner.invoke(app, ["export", "resnet10", "--random-init", "--onnx", "--out", str(tmp_path),
                                 "--exporter", "legacy", "--provider", "cuda"])
    assert result.exit_code == 2
    assert "--provider cuda was requested" in result.stderr and "--provider cpu" in result.stderr


def test_bench_cli_json() -> None:
    result = runner.invoke(app, ["bench", "resnet10", "--batch-sizes", "2", "--variants",
                                 "torch eager,onnxruntime fp32", "--min-seconds", "0", "--exporter", "legacy", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["variant"]: r for r in json.loads(result.stdout)}
    assert set(rows) == {"torch eager", "onnxruntime fp32"}
    assert rows["torch eager"]["ratio_to_eager"] == 1.0
    assert rows["onnxruntime fp32"]["images_per_s"] > 0 and rows["onnxruntime fp32"]["batch"] == 2
