"""`aperture export`, `aperture predict` and `aperture bench` end to end (typer's CliRunner)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
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
        "--no-normalize", "--int8", "--fp16", "--fp16-io", "--data-dir", str(synthetic_cifar),
        "--calibration-images", "50", "--max-val-images", "50", "--provider", "cpu",
    ])
    return out, result.output if result.exit_code == 0 else f"exit {result.exit_code}: {result.output}"


def test_export_end_to_end(exported: tuple[Path, str]) -> None:
    out, output = exported
    assert not output.startswith("exit"), output
    for stem in ("resnet10", "resnet10.int8", "resnet10.fp16"):
        assert (out / f"{stem}.onnx").is_file()
        report = json.loads((out / f"{stem}.report.json").read_text())
        assert report["passed"] is True and report["provider"] == "CPUExecutionProvider"
        assert report["comparisons"][-1]["inputs"] == "CIFAR-10 test"
        assert report["comparisons"][-1]["num_images"] == 50
    assert json.loads((out / "resnet10.int8.report.json").read_text())["precision"] == "int8"
    fp16 = onnx.load(str(out / "resnet10.fp16.onnx"))
    assert fp16.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16  # --fp16-io
    assert "PASS" in output and "wrote" in output
    # not a terminal (CliRunner, like a pipe): a plain timestamped line per step, no spinner
    for step in ("exporting resnet10", "converting to fp16", "quantising to int8", "validating resnet10.onnx",
                 "validating resnet10.fp16.onnx", "validating resnet10.int8.onnx"):
        assert f"s] {step}" in output, step
    assert "stratified 50 of 200" in " ".join(output.split()) and "±" in output


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
    assert "--weights SRC" in result.stderr and "--random-init" in result.stderr


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
    assert not list(tmp_path.glob("*.onnx"))  # refused before exporting


def test_export_with_weights_file(tmp_path: Path) -> None:
    import torch

    from aperture_zoo.export.onnx_export import graph_opset, read_metadata
    from aperture_zoo.weights import decode_metadata
    from aperture_zoo.model import create_model
    from aperture_zoo.files import file_sha256
    from aperture_zoo.weights import save_weights

    torch.manual_seed(3)
    weights = save_weights(create_model("resnet10"), tmp_path / "model.safetensors")
    out = tmp_path / "out"
    result = runner.invoke(app, ["export", "resnet10", "--weights", str(weights), "--onnx", "--out", str(out),
                                 "--exporter", "legacy", "--opset", "17", "--batch", "3", "--no-validate"])
    assert result.exit_code == 0, result.output
    path = out / "resnet10.onnx"
    meta = decode_metadata(read_metadata(path))
    assert meta["weights_sha256"] == file_sha256(weights) and meta["weights_sha256_of"] == "file"
    proto = onnx.load(str(path))
    assert meta["opset"] == graph_opset(proto) == 17
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 3 and meta["input"]["shape"][0] == 3
    assert "validation skipped" in result.stderr and not (out / "resnet10.report.json").exists()


def test_export_validation_failure_exits_1(synthetic_cifar: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from aperture_zoo.export import validate as validate_mod
    from aperture_zoo.export.validate import Tolerance

    # A bound no file can meet stands in for a broken export.
    monkeypatch.setattr(validate_mod, "tolerance_for", lambda precision, device: Tolerance(max_abs=-1.0, min_agreement=100.0))
    result = runner.invoke(app, ["export", "resnet10", "--random-init", "--onnx", "--out", str(tmp_path),
                                 "--exporter", "legacy", "--provider", "cpu", "--data-dir", str(synthetic_cifar),
                                 "--max-val-images", "20"])
    assert result.exit_code == 1, result.output
    assert "FAIL" in result.stdout and "failed: fp32/cpu on random, all: max |Δlogit|" in result.stderr
    # the failed file is not left where a user would take it for a good one
    assert not (tmp_path / "resnet10.onnx").exists() and (tmp_path / "resnet10.FAILED.onnx").is_file()
    assert "kept as" in result.stderr and "resnet10.FAILED.onnx" in result.stderr
    assert not (tmp_path / "resnet10.report.json").exists()
    report = json.loads((tmp_path / "resnet10.FAILED.report.json").read_text())
    assert report["passed"] is False and report["renamed_from"] == "resnet10.onnx"
    assert any("random, all" in f for f in report["failures"]) and any("CIFAR-10 test" in f for f in report["failures"])


@pytest.mark.parametrize("value", ["0", "some", "-3"])
def test_export_bad_max_val_images(tmp_path: Path, value: str) -> None:
    result = runner.invoke(app, ["export", "resnet10", "--random-init", "--onnx", "--out", str(tmp_path),
                                 "--max-val-images", value])
    assert result.exit_code == 2 and "--max-val-images must be a positive number of test images or 'all'" in result.stderr


def test_export_bad_batch(tmp_path: Path) -> None:
    result = runner.invoke(app, ["export", "resnet10", "--random-init", "--onnx", "--out", str(tmp_path), "--batch", "big"])
    assert result.exit_code == 2 and "--batch must be 'dynamic' or a positive integer" in result.stderr


def test_bench_cli_json() -> None:
    import shlex

    # typed in a shell without quotes: the variant names must survive word splitting
    args = shlex.split("bench resnet10 --batch-sizes 2 --variants torch-eager,ort-fp32 --min-seconds 0 "
                       "--exporter legacy --device cpu --json")
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["environment"]["torch"] and doc["environment"]["onnxruntime"]  # which machine the figures are from
    rows = {r["variant"]: r for r in doc["rows"]}
    assert set(rows) == {"torch-eager", "ort-fp32"}
    assert rows["torch-eager"]["ratio_to_eager"] == 1.0 and rows["torch-eager"]["ratio_to_ort_fp32"] is None
    assert rows["ort-fp32"]["ratio_to_ort_fp32"] == 1.0
    assert rows["ort-fp32"]["images_per_s"] > 0 and rows["ort-fp32"]["batch"] == 2


def test_bench_cli_table() -> None:
    result = runner.invoke(app, ["bench", "resnet10", "--batch-sizes", "1", "--variants", "torch eager",
                                 "--min-seconds", "0", "--device", "cpu"])  # the old spaced name still works
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "**resnet10 (random weights): images/s**"
    assert lines[2].startswith("| runtime ") and lines[4].startswith("| torch-eager ")


@pytest.mark.parametrize("args, message", [
    (["--batch-sizes", "1,x"], "--batch-sizes must be positive integers"),
    (["--batch-sizes", "0"], "--batch-sizes must be positive integers"),
    (["--variants", "torch-eager,tensorrt"], "unknown variant(s) ['tensorrt']"),
    (["--variants", "eager"], "choose from torch-eager, torch-channels-last"),
    (["--device", "tpu"], "--device must be cpu, cuda or auto"),
])
def test_bench_cli_bad_arguments(args: list[str], message: str) -> None:
    result = runner.invoke(app, ["bench", "resnet10", *args])
    assert result.exit_code == 2 and message in result.stderr, result.output


def test_bench_ratios_and_table() -> None:
    from aperture_zoo.export.bench import BenchRow, add_ratios, format_table

    rows = add_ratios([
        BenchRow("ort-int8", "cpu", 256, 600.0),   # order does not matter
        BenchRow("torch-eager", "cpu", 256, 60.0),
        BenchRow("ort-fp32", "cpu", 256, 200.0),
        BenchRow("torch-compile", "cpu", 256, None, note="failed: no compiler"),
        BenchRow("torch-eager", "cpu", 1, 10.0),
    ])
    int8, eager, fp32, failed, eager1 = rows
    assert int8.ratio_to_eager == 10.0 and int8.ratio_to_ort_fp32 == 3.0
    assert eager.ratio_to_eager == 1.0 and eager.ratio_to_ort_fp32 is None
    assert fp32.ratio_to_ort_fp32 == 1.0 and failed.ratio_to_eager is None and eager1.ratio_to_eager == 1.0
    lines = format_table(rows, title="t").splitlines()
    assert lines[0] == "**t**" and lines[2].startswith("| runtime ") and len(lines) == 4 + len(rows) + 3
    assert len({len(line) for line in lines[2:4 + len(rows)]}) == 1  # aligned columns
    cells = [c.strip() for c in lines[4].strip("|").split("|")]
    assert cells == ["ort-int8", "cpu", "256", "600", "—", "10.00", "3.00"]  # no threads column: none was set
    assert lines[7].startswith("| torch-compile [1] ") and lines[-1] == "[1] failed: no compiler"  # notes below
    assert max(len(line) for line in lines[2:4 + len(rows)]) <= 80


def test_bench_environment_names_what_the_figures_depend_on() -> None:
    """``environment()``: what a benchmark figure depends on besides the model, for recording a baseline."""
    import torch

    from aperture_zoo.export.bench import environment

    env = environment()
    assert env["torch"] == torch.__version__ and env["cpu_count"] >= 1
    assert str(env["cpu"]).startswith("cpu (") and f"{torch.get_num_threads()} threads" in str(env["cpu"])
    assert env["cuda_device"] is None or isinstance(env["cuda_device"], str)


def test_bench_variants_do_not_leak_memory_format(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each torch variant runs on its own copy: eager NCHW after channels_last is still NCHW."""
    import torch

    from aperture_zoo.export import bench
    from aperture_zoo.model import create_model

    seen: list[tuple[bool, bool]] = []
    real = bench._torch_runner

    def spy(module: torch.nn.Module, x: torch.Tensor):  # type: ignore[no-untyped-def]
        nhwc_weights = any(p.dim() == 4 and not p.is_contiguous() for p in module.parameters())
        seen.append((nhwc_weights, not x.is_contiguous()))
        return real(module, x)

    monkeypatch.setattr(bench, "_torch_runner", spy)
    model = create_model("resnet10").eval()
    rows = bench.run_benchmark(model, batch_sizes=(2, 3), variants=("torch-channels-last", "torch eager"),
                               device="cpu", min_seconds=0, min_iters=1, warmup=0)
    assert [(r.variant, r.batch) for r in rows] == [("torch-channels-last", 2), ("torch-eager", 2),
                                                    ("torch-channels-last", 3), ("torch-eager", 3)]
    assert seen == [(True, True), (False, False)] * 2
    assert all(p.is_contiguous() for p in model.parameters())  # the caller's model is untouched


def test_runtimes_command_runs_the_files_and_records_what_passed(exported: tuple[Path, str], synthetic_cifar: Path,
                                                                  tmp_path: Path) -> None:
    """The matrix machinery on the installed onnxruntime (the marked test runs the old runtimes)."""
    from aperture_zoo.export.onnx_export import read_metadata

    out, output = exported
    assert not output.startswith("exit"), output
    table = tmp_path / "runtimes.json"
    result = runner.invoke(app, ["runtimes", "resnet10", "--random-init", "--onnx-dir", str(out), "--runtimes", "ort",
                                 "--data-dir", str(synthetic_cifar), "--max-images", "50", "--record", "-o", str(table)],
                           terminal_width=200)
    assert result.exit_code == 0, result.output
    matrix = json.loads(table.read_text())
    cells = {c["precision"]: c for c in matrix["cells"]}
    assert set(cells) == {"fp32", "fp16", "int8"} and all(c["passed"] for c in cells.values()), matrix
    assert cells["fp32"]["agreement"] == 100.0 and cells["fp32"]["max_abs_diff"] <= 1e-4  # a --no-normalize file
    assert cells["int8"]["images"] == 50 and cells["int8"]["declared_valid"] is True  # for onnxruntime
    assert "| ort |" in result.output
    for stem in ("resnet10", "resnet10.fp16", "resnet10.int8"):
        recorded = json.loads(read_metadata(out / f"{stem}.onnx")["validated_runtimes"])
        assert [e["runtime"] for e in recorded] == ["onnxruntime"] and recorded[0]["images"] == 50, recorded
    assert "opencv-dnn" in json.loads(read_metadata(out / "resnet10.int8.onnx")["not_validated_for"])


@pytest.mark.parametrize("args, message", [
    (["--runtimes", "ort,tflite"], "--runtimes must name some of ort, ort-cuda"),
    (["--record"], "--record writes into existing files; pass them with --onnx-dir"),
    (["--max-images", "0"], "--max-images must be at least 1"),
])
def test_runtimes_command_refuses_bad_options_in_one_line(args: list[str], message: str) -> None:
    result = runner.invoke(app, ["runtimes", "resnet10", "--random-init", *args], terminal_width=200)
    assert result.exit_code == 2 and message in result.output and len(result.output.strip().splitlines()) == 1, result.output
