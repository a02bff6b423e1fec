from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from aperture_zoo.cli import app

runner = CliRunner()


def test_list_json_matches_report() -> None:
    result = runner.invoke(app, ["list", "--json", "--verify"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["name"] for r in rows] == ["resnet10", "resnet18", "resnet20", "resnet22", "resnet24", "resnet32"]
    assert all(r["params"] == r["report_params"] and r["params_match_report"] for r in rows)


def test_list_table_and_pattern() -> None:
    result = runner.invoke(app, ["list", "resnet2*"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "4,922,826" in result.stdout and "resnet10" not in result.stdout


def test_list_table_fits_80_columns_without_truncating_numbers() -> None:
    # `make run` and CI logs are not terminals: rich renders 80 columns there.
    result = runner.invoke(app, ["list"], env={"COLUMNS": "80"})
    assert result.exit_code == 0
    assert "…" not in result.stdout
    for name, params in (("resnet10", "4,903,242"), ("resnet18", "4,996,254"), ("resnet20", "4,998,382"),
                         ("resnet22", "4,922,826"), ("resnet24", "4,935,242"), ("resnet32", "4,754,218")):
        line = next(line for line in result.stdout.splitlines() if line.strip().startswith(name))
        assert line.count(params) == 2, line  # built and Table 1, side by side


def test_list_says_what_the_published_figures_were_measured_on() -> None:
    """Regression: the table said flip TTA and ECE came from "the stratified sample"; all 10,000 images were used."""
    result = runner.invoke(app, ["list"], env={"COLUMNS": "200"})
    text = " ".join(result.stdout.split())
    assert "each on all 10,000 CIFAR-10 test images" in text and "stratified" not in text


def test_info_reports_measured_flops() -> None:
    result = runner.invoke(app, ["info", "resnet22", "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["params"] == 4_922_826 and info["spec"]["blocks"] == [3, 2, 3, 2]
    # Conv/linear MACs of resnet22 counted by hand from the architecture.
    assert info["macs_per_image"] == _hand_counted_macs([3, 2, 3, 2], [64, 128, 192, 256])
    assert info["flops_per_image"] == 2 * info["macs_per_image"]


@pytest.mark.parametrize("name", ["resnet10", "resnet18", "resnet20", "resnet22", "resnet24", "resnet32"])
def test_flops_of_every_model_match_a_hand_count(name: str) -> None:
    from aperture_zoo.registry import get_spec
    from aperture_zoo.summary import measure

    spec = get_spec(name)
    assert measure(name)["flops"] == 2 * _hand_counted_macs(list(spec.blocks), list(spec.channels))


def test_list_pattern_without_match_is_a_clear_error() -> None:
    result = runner.invoke(app, ["list", "vgg*"])
    assert result.exit_code == 2
    assert "no model matches 'vgg*'" in result.output and "resnet22" in result.output


def _hand_counted_macs(blocks: list[int], channels: list[int]) -> int:
    side, macs, cin = 32, 3 * channels[0] * 9 * 32 * 32, channels[0]
    for i, (b, c) in enumerate(zip(blocks, channels)):
        for j in range(b):
            if i > 0 and j == 0:
                side //= 2
            macs += (cin * c * 9 + c * c * 9) * side * side
            if cin != c or (i > 0 and j == 0):
                macs += cin * c * side * side
            cin = c
    return macs + cin * 10


def test_unknown_model_is_one_clear_line() -> None:
    result = runner.invoke(app, ["info", "resnet23"])
    assert result.exit_code == 2
    assert "did you mean resnet20, resnet22, resnet24, resnet32?" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("argv", [["-m", "aperture_zoo", "--help"], ["-m", "aperture_zoo", "list", "--help"]])
def test_help_does_not_import_heavy_modules(argv: list[str]) -> None:
    code = (
        "import sys, runpy; sys.argv = ['aperture'] + sys.argv[1:]\n"
        "try:\n    runpy.run_module('aperture_zoo', run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'onnx', 'onnxruntime', 'huggingface_hub', 'matplotlib') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, *argv[2:]], capture_output=True, text=True, check=True)
    assert "Usage" in out.stdout
    assert "HEAVY []" in out.stdout, out.stdout[-300:]


def test_python_dash_m_runs_the_same_cli() -> None:
    out = subprocess.run([sys.executable, "-m", "aperture_zoo", "list", "--json"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert len(json.loads(out.stdout)) == 6
