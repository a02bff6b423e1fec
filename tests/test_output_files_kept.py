"""Nothing is lost: eval --out, card --out and export -o replace only files aperture wrote, never a user's own file
of the same name (each writer refuses it in one line, naming it)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from aperture_zoo.cli import app
from aperture_zoo.files import file_sha256
from aperture_zoo.provenance import ForeignFileError, refuse_foreign, written_by_aperture
from aperture_zoo.train.plots import plot_curves
from hub_fixtures import random_weights
from test_data_report import _cache_in_tmp  # noqa: F401 - the decode cache in tmp
from test_eval_unseen import _cifar_weights, _photos

pytestmark = pytest.mark.usefixtures("one_thread")
MINE = {"eval.json": '{"my": "own results"}\n', "confusion.png": "my own figure\n", "reliability.png": "mine\n",
        "curves.png": "my notes\n", "weights.json": '{"x": 1}\n', "resnet10.onnx": "my onnx notes\n",
        "metrics.jsonl": "my log\n"}


def _mine(folder: Path, *names: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_text(MINE[name])
    return folder


def _refused(args: list[str], kept: Path) -> str:
    ran = CliRunner().invoke(app, args)
    text = " ".join(ran.output.split())
    last = ran.output.strip().splitlines()[-1]  # export names the file once its staged set is ready to move in
    assert ran.exit_code == 2 and last.startswith("error: ") and "is not a file aperture wrote" in text, ran.output
    assert "move it aside, or write elsewhere" in text
    for path in kept.iterdir():
        assert path.read_text() == MINE[path.name], path  # every user file as it was
    return text


def test_user_files_of_the_products_names_are_not_judged_its_own(tmp_path: Path) -> None:
    for name in MINE:
        assert not written_by_aperture(_mine(tmp_path, name) / name), name
    with pytest.raises(ForeignFileError, match="eval.json' is not a file aperture wrote"):
        refuse_foreign(tmp_path, ["nothing-here.json", "eval.json"], "the evaluation", "--out DIR")
    refuse_foreign(tmp_path, ["README.txt", "nothing-here.json"], "the evaluation", "--out DIR")  # not judged / absent


def test_eval_out_keeps_a_users_eval_json_and_figures_and_replaces_its_own(tmp_path: Path) -> None:
    weights = _cifar_weights(tmp_path / "w.safetensors")
    photos = _photos(tmp_path / "photos", 2)
    base = ["eval", "resnet10", "--weights", str(weights), "--dataset", str(photos), "--unseen", "--device", "cpu"]
    for name in ("eval.json", "confusion.png", "reliability.png"):
        out = _mine(tmp_path / f"out-{name}", name)
        assert repr(str(out / name)) in _refused([*base, "--out", str(out)], out)
    out = tmp_path / "ours"
    for _ in range(2):  # an earlier evaluation's files are replaced as before
        ran = CliRunner().invoke(app, [*base, "--out", str(out)])
        assert ran.exit_code == 0, ran.output
    assert written_by_aperture(out / "eval.json") and written_by_aperture(out / "confusion.png")


def test_card_out_keeps_a_users_curves_and_weights_json(tmp_path: Path) -> None:
    run = tmp_path / "run"
    random_weights(run / "model.safetensors", "resnet10")
    for name in ("curves.png", "weights.json"):
        out = _mine(tmp_path / f"card-{name}", name)
        if name == "curves.png":  # a run's figure is copied only from a run that has one
            rows = [{"epoch": 1, "train_loss": 1.0, "test_loss": 1.0, "train_top1": 50.0, "test_top1": 50.0}]
            plot_curves(rows, run / "curves.png", made_from={"weights_sha256": file_sha256(run / "model.safetensors")})
        assert repr(str(out / name)) in _refused(["card", "resnet10", "--run", str(run), "--out", str(out)], out)
    for _ in range(2):
        ran = CliRunner().invoke(app, ["card", "resnet10", "--run", str(run), "--out", str(tmp_path / "ours")])
        assert ran.exit_code == 0, ran.output


def test_export_o_keeps_a_users_file_named_like_the_onnx_file(tmp_path: Path) -> None:
    base = ["export", "resnet10", "--random-init", "--onnx", "--exporter", "legacy", "--no-validate"]
    out = _mine(tmp_path / "mine", "resnet10.onnx")
    assert repr(str(out / "resnet10.onnx")) in _refused([*base, "-o", str(out)], out)
    for _ in range(2):
        ran = CliRunner().invoke(app, [*base, "-o", str(tmp_path / "ours")])
        assert ran.exit_code == 0, ran.output
    assert written_by_aperture(tmp_path / "ours" / "resnet10.onnx")
