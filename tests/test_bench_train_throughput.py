"""bench/train_throughput.py runs and its arithmetic holds (its timings are never asserted)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "train_throughput.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("train_throughput", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def test_bench_reports_images_per_s_and_tflops_from_the_counted_flops(bench, capsys) -> None:
    import torch

    from aperture_zoo.summary import measure

    before = torch.get_num_threads()
    try:
        assert bench.main(["--models", "resnet10", "--device", "cpu", "--batch-size", "2", "--steps", "1",
                           "--warmup", "0", "--memory-format", "both", "--threads", "1", "--json"]) == 0
    finally:
        torch.set_num_threads(before)
    result = json.loads(capsys.readouterr().out)
    assert result["torch"] == torch.__version__ and result["device"].startswith("cpu")
    rows = result["rows"]
    assert [(r["model"], r["memory_format"], r["precision"]) for r in rows] == [
        ("resnet10", "channels_last", "fp32"), ("resnet10", "nchw", "fp32")]
    flops = 3 * measure("resnet10")["flops"]
    for r in rows:
        assert r["images_per_s"] == pytest.approx(r["steps"] * r["batch"] / r["seconds"])
        assert r["tflops"] == pytest.approx(r["images_per_s"] * flops / 1e12)
        assert r["train_gflop_per_image"] == pytest.approx(flops / 1e9)
