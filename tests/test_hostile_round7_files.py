"""A third hostile try: files written into a folder that holds published weights, the demo's models
folder holding the user's own files, figures shipped beside weights they were not drawn for."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from aperture_zoo.cli import app
from aperture_zoo.files import file_sha256
from aperture_zoo.pretrained import MODEL_CARDS_DIR
from hub_fixtures import random_weights

PUBLISHED = ("holds the published resnet10 weights", "Write it elsewhere with --out")


@pytest.fixture()
def cards(tmp_path: Path, monkeypatch) -> Path:
    """A copy of the published resnet10 card folder, made the command's default card folder."""
    folder = tmp_path / "cards" / "resnet10"
    shutil.copytree(MODEL_CARDS_DIR / "resnet10", folder)
    monkeypatch.setattr("aperture_zoo.pretrained.MODEL_CARDS_DIR", tmp_path / "cards")
    return folder


def _snapshot(folder: Path) -> dict[str, str]:
    return {p.name: file_sha256(p) for p in sorted(folder.iterdir()) if p.is_file()}


def _refused(result) -> str:
    assert result.exit_code == 2, result.output
    first = result.output.splitlines()[0]
    assert first.startswith("error: ") and all(part in result.output.replace("\n", "") for part in PUBLISHED), first
    return first


def test_card_with_weights_never_writes_into_the_published_folder(tmp_path: Path, cards: Path) -> None:
    """F9 + F8: `card resnet10 --weights RUN` (default --out: the published folder) said a published report was
    stale ("export again or remove it"), and once those were removed rewrote README/config/weights.json for the
    user's run beside the published weights. Now the --run refusal, before any neighbour is looked at."""
    run = random_weights(tmp_path / "r1" / "model.safetensors", "resnet10", init_seed=5)
    before = _snapshot(cards)
    first = _refused(CliRunner().invoke(app, ["card", "resnet10", "--weights", str(run)]))
    assert "stale" not in first and "report" not in first
    for report in cards.glob("*.report.json"):  # following the old advice changes nothing
        report.unlink()
    (cards / "eval.json").unlink()
    _refused(CliRunner().invoke(app, ["card", "resnet10", "--weights", str(run)]))
    _refused(CliRunner().invoke(app, ["card", "resnet10", "--weights", str(run), "--out", str(cards)]))
    assert {k: v for k, v in _snapshot(cards).items() if k in before} == {
        k: v for k, v in before.items() if k in _snapshot(cards)}
    ok = CliRunner().invoke(app, ["card", "resnet10", "--weights", str(run), "--out", str(tmp_path / "mine")])
    assert ok.exit_code == 0, ok.output


def test_the_published_weights_still_write_their_own_card(cards: Path) -> None:
    """The guard is about other weights: the published card is regenerated in its folder as before."""
    result = CliRunner().invoke(app, ["card", "resnet10"])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("command", [
    lambda w, c: ["eval", "resnet10", "--weights", w, "--out", c],
    lambda w, c: ["runtimes", "resnet10", "--weights", w, "--out", f"{c}/runtimes.json"],
    lambda w, c: ["export", "resnet10", "--weights", w, "--onnx", "--no-validate", "-o", c],
], ids=["eval", "matrix-json", "export"])
def test_no_writer_puts_other_weights_files_into_a_published_folder(tmp_path: Path, cards: Path, command) -> None:
    """O7: `runtimes --out model_cards/resnet10/runtimes.json` wrote another weights' matrix there without a
    word; eval and export did the same. Every writer now calls catalog.refuse_published_folder first."""
    run = random_weights(tmp_path / "r1" / "model.safetensors", "resnet10", init_seed=5)
    before = _snapshot(cards)
    _refused(CliRunner().invoke(app, command(str(run), str(cards))))
    assert _snapshot(cards) == before


@pytest.mark.parametrize("command", [
    lambda w, c, t: ["eval", "resnet10", "--weights", w, "--out", str(t), "--write-temperature", f"{c}/model.t.safetensors"],
    lambda w, c, t: ["runtimes", "resnet10", "--weights", w, "--onnx-dir", c, "--record"],
], ids=["write-temperature", "record"])
def test_eval_write_temperature_and_runtimes_record_keep_out_of_a_published_folder(tmp_path: Path, cards: Path,
                                                                                     command) -> None:
    """Fourth hostile try (low): `eval --write-temperature` and `runtimes --record` had no published-folder guard."""
    run = random_weights(tmp_path / "r1" / "model.safetensors", "resnet10", init_seed=5)
    before = _snapshot(cards)
    result = CliRunner().invoke(app, command(str(run), str(cards), tmp_path / "ev"))
    assert result.exit_code == 2 and "holds the published resnet10 weights" in result.output.replace("\n", ""), \
        result.output
    assert _snapshot(cards) == before and not (tmp_path / "ev").exists()


def test_eval_out_never_replaces_another_runs_eval(tmp_path: Path) -> None:
    """Fourth hostile try (low): `eval --out RUN2` replaced run 2's eval.json with one of run 1's weights; a folder
    whose model.safetensors holds other weights now takes no eval of these (its own weights: as before)."""
    from cifar_synth import write_cifar10

    data = write_cifar10(tmp_path / "c", 2, 2, seed=0)
    r1 = random_weights(tmp_path / "r1" / "model.safetensors", "resnet10", init_seed=5)
    r2 = random_weights(tmp_path / "r2" / "model.safetensors", "resnet10", init_seed=6)
    (r2.parent / "eval.json").write_text('{"top1": 1.0, "confusion": [], "own": true}')  # an earlier eval's
    base = ["eval", "resnet10", "--data-dir", str(data), "--no-download", "--device", "cpu"]
    refused = CliRunner().invoke(app, [*base, "--weights", str(r1), "--out", str(r2.parent)])
    text = " ".join(refused.output.split())
    assert refused.exit_code == 2 and "holds other weights (model.safetensors, SHA-256" in text, text
    assert (r2.parent / "eval.json").read_text() == '{"top1": 1.0, "confusion": [], "own": true}'
    own = CliRunner().invoke(app, [*base, "--weights", str(r2), "--out", str(r2.parent)])
    assert own.exit_code == 0 and '"own"' not in (r2.parent / "eval.json").read_text(), own.output


def test_the_guard_is_the_folders_content_not_its_name(tmp_path: Path) -> None:
    """O7 at its root: any folder holding a published model.safetensors (a renamed copy too) is guarded."""
    from aperture_zoo.catalog import PublishedFolderError, refuse_published_folder

    folder = tmp_path / "renamed"
    folder.mkdir()
    shutil.copy(MODEL_CARDS_DIR / "resnet20" / "model.safetensors", folder / "model.safetensors")
    with pytest.raises(PublishedFolderError, match="holds the published resnet20 weights"):
        refuse_published_folder(folder, "0" * 64)
    refuse_published_folder(folder, file_sha256(folder / "model.safetensors"))  # its own weights: fine
    refuse_published_folder(tmp_path / "empty", "0" * 64)                       # no weights there: fine


# -- F1: figures carry what they were drawn from ----------------------------------------------------------------
def _run_with_figure(tmp_path: Path, name: str, seed: int) -> Path:
    from aperture_zoo.train.plots import plot_confusion

    weights = random_weights(tmp_path / name / "model.safetensors", "resnet10", init_seed=seed)
    plot_confusion([[1, 0], [0, 1]], ["a", "b"], weights.parent / "confusion.png",
                   made_from={"weights_sha256": file_sha256(weights)})
    return weights.parent


def test_card_refuses_another_runs_figures(tmp_path: Path) -> None:
    """F1: `card --run` copied confusion.png/curves.png/reliability.png without any check: another run's figures
    shipped with these weights. A figure records the weights it was drawn for (PNG text); card checks it."""
    r1, r2 = _run_with_figure(tmp_path, "r1", 1), _run_with_figure(tmp_path, "r2", 2)
    ok = CliRunner().invoke(app, ["card", "resnet10", "--run", str(r1), "--out", str(tmp_path / "C0")])
    assert ok.exit_code == 0, ok.output
    assert file_sha256(tmp_path / "C0" / "confusion.png") == file_sha256(r1 / "confusion.png")
    shutil.copy(r2 / "confusion.png", r1 / "confusion.png")
    result = CliRunner().invoke(app, ["card", "resnet10", "--run", str(r1), "--out", str(tmp_path / "C1")])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and "drawn for other weights" in result.output
    assert not (tmp_path / "C1" / "confusion.png").exists()


def test_a_figure_without_a_record_is_refused_not_redrawn(tmp_path: Path) -> None:
    """F1: an older PNG (no record of its weights) proves nothing: refused, and the message says so."""
    from PIL import Image

    r1 = _run_with_figure(tmp_path, "r1", 1)
    Image.new("RGB", (8, 8)).save(r1 / "curves.png")
    result = CliRunner().invoke(app, ["card", "resnet10", "--run", str(r1), "--out", str(tmp_path / "C")])
    assert result.exit_code == 2, result.output
    text = result.output.replace("\n", "")
    assert "curves.png" in text and "records no SHA-256" in text and "refused, not redrawn" in text


def test_a_figure_of_another_evaluation_of_the_same_weights_is_refused(tmp_path: Path) -> None:
    """F1: reliability.png left by an earlier eval of the same weights beside a newer eval.json it was not drawn
    from: the figure records the SHA-256 of its eval.json."""
    from aperture_zoo.provenance import StaleFileError, check_figure
    from aperture_zoo.train.plots import plot_confusion

    r1 = _run_with_figure(tmp_path, "r1", 1)
    sha = file_sha256(r1 / "model.safetensors")
    (r1 / "eval.json").write_text('{"weights_sha256": "%s"}\n' % sha)
    plot_confusion([[1]], ["a"], r1 / "reliability.png", made_from={"weights_sha256": sha, "eval_sha256": "f" * 64})
    with pytest.raises(StaleFileError, match="drawn from another evaluation"):
        check_figure(r1 / "reliability.png", sha, "resnet10", r1 / "eval.json")
    check_figure(r1 / "confusion.png", sha, "resnet10", r1 / "eval.json")  # records no evaluation: weights suffice


# -- F7: the demo's models folder never loses the user's files ---------------------------------------------------
from test_demo_files import _tiny, published  # noqa: E402,F401 - the demo folder fixture (a tiny "published" model)


def test_demo_never_overwrites_the_users_own_export(published: dict, tmp_path: Path) -> None:
    """F7: `demo --models-dir DIR` overwrote the user's resnet10.onnx/.fp16.onnx in DIR with the published export."""
    from aperture_zoo import demo
    from aperture_zoo.export.onnx_export import to_onnx

    mine = tmp_path / "M6"
    to_onnx(_tiny(7), mine / "resnet10.onnx", exporter="legacy")
    before = _snapshot(mine)
    with pytest.raises(demo.DemoError, match=r"resnet10.onnx is not a file the demo wrote.*use an empty --models-dir"):
        demo.prepare_models(mine, ["resnet10"])
    assert _snapshot(mine) == before


def test_demo_never_deletes_files_it_did_not_write_nor_replaces_a_foreign_models_json(published: dict,
                                                                                       tmp_path: Path) -> None:
    """F7: `demo --onnx F --models-dir DIR` deleted DIR/own/important.onnx (not the demo's) and replaced a
    models.json that was not its own."""
    from aperture_zoo import demo
    from aperture_zoo.export.onnx_export import to_onnx

    folder = tmp_path / "M7"
    to_onnx(_tiny(8), folder / "own" / "important.onnx", exporter="legacy")
    (folder / "notes.txt").write_text("keep")
    (folder / "models.json").write_text('{"mine": true}')
    mine = to_onnx(_tiny(3), tmp_path / "mine.onnx", exporter="legacy")
    before = _snapshot(folder) | {"own": file_sha256(folder / "own" / "important.onnx")}
    with pytest.raises(demo.DemoError, match=r"models.json is not the demo's own manifest.*remove models.json"):
        demo.add_onnx_files(folder, [mine])
    with pytest.raises(demo.DemoError, match="models.json is not the demo's own"):
        demo.write_manifest(folder, [])
    (folder / "models.json").unlink()
    with pytest.raises(demo.DemoError, match=r"own/important.onnx is not a file the demo wrote"):
        demo.add_onnx_files(folder, [mine])
    assert file_sha256(folder / "own" / "important.onnx") == before["own"]
    assert (folder / "notes.txt").read_text() == "keep"
    # the demo's own copies are still its to replace: a second file replaces the first one it wrote
    (folder / "own" / "important.onnx").unlink()
    (first,) = demo.add_onnx_files(folder, [mine])
    other = to_onnx(_tiny(4), tmp_path / "other.onnx", exporter="legacy")
    (second,) = demo.add_onnx_files(folder, [other])
    assert not (folder / first.file).exists() and (folder / second.file).is_file()


def _figure_png(text: dict[str, str]) -> bytes:
    import io

    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for k, v in text.items():
        info.add_text(k, v)
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from profiles import examples  # noqa: E402
from test_fuzz_parsers import _mutations  # noqa: E402


@settings(max_examples=examples(30), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=200) | _mutations(_figure_png({"aperture_zoo:weights_sha256": "a" * 64})))
def test_a_figures_record_is_read_from_outside_bytes_without_a_traceback(tmp_path: Path, data: bytes) -> None:
    """F1's reader parses outside bytes (a PNG anyone can write): it accepts the exact record or refuses in one line."""
    from aperture_zoo.provenance import StaleFileError, check_figure

    path = tmp_path / "confusion.png"
    path.write_bytes(data)
    try:
        check_figure(path, "a" * 64)
    except StaleFileError as exc:
        assert "\n" not in str(exc)
