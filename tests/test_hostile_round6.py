"""A second hostile try after round 5's fixes: error lines that quoted outside text with a line break,
metadata that is parseable but unusable, a damaged Hub cache ref."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from typer.testing import CliRunner

from aperture_zoo.cli import app
from aperture_zoo.model import create_model
from aperture_zoo.weights import save_weights


def _weights_with(tmp_path: Path, **changes: str) -> Path:
    torch.manual_seed(0)
    model = create_model("resnet10", channels=(8, 16, 16, 32), num_classes=3).eval()
    model.spec = model.spec.replace(class_names=("car", "cat", "plane"))
    path = save_weights(model, tmp_path / "ok" / "model.safetensors")
    with safe_open(str(path), "pt") as f:
        meta, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    meta.update(changes)
    out = tmp_path / "edited" / "model.safetensors"
    out.parent.mkdir()
    save_file(tensors, str(out), metadata=meta)
    return out


@pytest.mark.parametrize("change", [{"std": "[0, 0, 0]"}, {"mean": "[NaN, 0, 0]"}, {"std": "[0.25, 0.25]"},
                                    {"label_names": json.dumps(["car", "cat"])}, {"label_names": "{}"}],
                         ids=["std-zero", "mean-nan", "std-short", "two-names-three-outputs", "names-not-a-list"])
def test_unusable_normalisation_or_names_are_refused_not_replaced_by_cifars(tmp_path: Path, change: dict) -> None:
    """These were replaced by CIFAR-10's normalisation or by class_0.. names: answers silently off."""
    from aperture_zoo.samples import sample_images

    path = _weights_with(tmp_path, **change)
    image = str(sample_images()[0][0])
    result = CliRunner().invoke(app, ["predict", image, "--weights", str(path)])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and "metadata is damaged or was edited" in result.output


def test_an_error_quoting_a_name_with_a_line_break_stays_one_line(tmp_path: Path) -> None:
    """An extra tensor named with a line break: the refusal quotes it, escaped, on its one line."""
    path = _weights_with(tmp_path)
    with safe_open(str(path), "pt") as f:
        meta, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    tensors["x\nFORGED: all good"] = torch.zeros(1)
    save_file(tensors, str(path), metadata=meta)
    from aperture_zoo.samples import sample_images

    result = CliRunner().invoke(app, ["predict", str(sample_images()[0][0]), "--weights", str(path)])
    assert result.exit_code == 2 and result.output.startswith("error: ")
    assert not any(line.startswith("FORGED") for line in result.output.splitlines()), result.output
    assert "x\\nFORGED" in result.output.replace("\n", "")


def test_a_cached_hub_ref_pointing_outside_the_cache_is_one_line(tmp_path: Path, monkeypatch) -> None:
    repo = tmp_path / "hub" / "models--me--esc"
    (repo / "refs").mkdir(parents=True)
    (repo / "snapshots").mkdir()
    (repo / "refs" / "main").write_text("../../../../evil")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = CliRunner().invoke(app, ["info", "hf-hub:me/esc"])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and "cache" in result.output and "Traceback" not in result.output
