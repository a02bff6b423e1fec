"""Outside text never reaches the terminal as control bytes: every command, on hostile names.

Class names, image file names, folder names and weights metadata carry escape sequences (colour,
window title), carriage returns, bells, bidi overrides and rich markup. Every command that prints
them is run (a tiny model, a few images) and its stdout and stderr are scanned: the text must be
shown (``\\x1b`` visible), never sent, and ``[red]`` never read as markup.
"""

from __future__ import annotations

import ast
import hashlib
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from aperture_zoo.cli import app
from cifar_synth import make_images, write_png_folder
from hub_fixtures import hub_server  # noqa: F401 - the local Hub, for push
from hub_server import HubServer
from profiles import examples

ROOT = Path(__file__).resolve().parent.parent
CLASSES = ["\x1b[31mred\x1b[0m", "[red]mark[blink]\rcr\x07", "\u202eevil\x1b]0;title\x07\nFORGED: class line"]  # no "/"
FORGED = "FORGED"  # a newline in a class or file name must never start a line of output
CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]")


@dataclass(frozen=True)
class Hostile:
    root: Path
    data: Path        # a folder of the CLASSES, images with hostile names, one undecodable file
    weights: Path     # trained on it by `aperture train`
    onnx: Path        # exported by `aperture export`
    outputs: dict     # command -> (exit code, output) of the commands the fixture ran


def _run(args: list[str]) -> tuple[int, str]:
    result = CliRunner().invoke(app, args)
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Hostile:
    root = tmp_path_factory.mktemp("gate")
    x, y = make_images(8, 4)
    data = write_png_folder(root / "data \x1b[1m[bold]", x[y < 3], y[y < 3], CLASSES, 8)
    for folder in data.iterdir():
        first = sorted(folder.iterdir())[0]
        first.rename(folder / "img \x1b[2J\r\u202e[blue]\nFORGED: file line.png")
    (data / CLASSES[0] / "junk \x1b[5m.png").write_bytes(b"not an image")
    # folders the user typed: a newline in them must not forge a line of a header either (info, predict, eval)
    run, onnx = root / "run \x07\nFORGED: run line", root / "onnx \x1b[0m\nFORGED: onnx line"
    outputs = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("APERTURE_DATA", str(root / "cache"))
        torch.manual_seed(0)
        outputs["train"] = _run(["train", "resnet10", "--arch", "channels=8,8,8,8", "--dataset", str(data), "--epochs",
                                 "1", "-b", "8", "--device", "cpu", "--out", str(run), "--no-progress"])
        outputs["export"] = _run(["export", str(run / "model.safetensors"), "--onnx", "--exporter", "legacy", "--opset",
                                  "17", "--dataset", str(data), "-o", str(onnx)])
    return Hostile(root, data, run / "model.safetensors", onnx / "resnet10.onnx", outputs)


def _fake_web(web: Path) -> Path:
    from aperture_zoo import demo

    dist = web / demo.ORT_DIST
    dist.mkdir(parents=True)
    (dist / "ort.wasm.min.mjs").write_bytes(b"ort")
    (web / "index.html").write_text("<!doctype html>")
    (web / demo.ORT_CHECKSUMS).write_text(f"{hashlib.sha256(b'ort').hexdigest()}  {demo.ORT_DIST.as_posix()}/ort.wasm.min.mjs\n")
    return web


def _samples_weights(folder: Path) -> Path:
    """A full resnet10 whose metadata names hostile classes, where `samples` finds it ($APERTURE_WEIGHTS_DIR)."""
    from aperture_zoo.model import create_model
    from aperture_zoo.weights import save_weights

    names = tuple(CLASSES + [f"c{i}" for i in range(7)])
    torch.manual_seed(0)
    save_weights(create_model("resnet10", class_names=names), folder / "resnet10" / "model.safetensors",
                 {"note \x1b[31m": "[red]\x1b]0;meta\x07[/]"})
    return folder


COMMANDS = ["train", "export", "list", "info", "predict", "predict-onnx", "eval", "card", "push", "samples", "demo", "data-report"]


@pytest.mark.parametrize("command", COMMANDS)
def test_no_control_bytes_reach_the_terminal(hostile: Hostile, command: str, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch, hub_server: HubServer) -> None:  # noqa: F811
    """Regression: class names with escape sequences reached the terminal through `eval` and `demo`."""
    monkeypatch.setenv("APERTURE_DATA", str(hostile.root / "cache"))
    png = next((hostile.data / CLASSES[1]).glob("img*"))
    if command in hostile.outputs:
        code, output = hostile.outputs[command]
    elif command == "list":
        code, output = _run(["list"])
    elif command == "info":
        code, output = _run(["info", str(hostile.weights)])
    elif command == "predict":
        code, output = _run(["predict", str(png), str(hostile.data / CLASSES[0] / "junk \x1b[5m.png"),
                             "--model", str(hostile.weights)])
    elif command == "predict-onnx":
        code, output = _run(["predict", str(png), "--onnx", str(hostile.onnx)])
    elif command == "eval":
        code, output = _run(["eval", str(hostile.weights), "--dataset", str(hostile.data), "--device", "cpu",
                             "--out", str(tmp_path / "ev \x1b[1m")])
    elif command == "card":
        code, output = _run(["card", str(hostile.weights), "--out", str(tmp_path / "card \x1b[1m")])
    elif command == "push":
        monkeypatch.setenv("HF_ENDPOINT", hub_server.url)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        code, output = _run(["push", str(hostile.weights), "--repo-id", "zoo/gate", "--token", "tok-alice"])
    elif command == "data-report":
        code, output = _run(["data-report", str(hostile.data)])
    elif command == "samples":
        monkeypatch.setenv("APERTURE_WEIGHTS_DIR", str(_samples_weights(tmp_path / "w")))
        code, output = _run(["samples", "resnet10", "--show", "resnet10"])
    else:
        from aperture_zoo.demo import DemoServer

        monkeypatch.setattr(DemoServer, "wait", lambda self: None)  # the start-up lines, then stop
        mine = tmp_path / "mine \x1b[31m[red]\u202e\nFORGED: model line.onnx"
        shutil.copyfile(hostile.onnx, mine)
        code, output = _run(["demo", "--web-dir", str(_fake_web(tmp_path / "web")), "--models-dir",
                             str(tmp_path / "models"), "--onnx", str(mine), "--port", "0"])
    expected = {"predict": 1}.get(command, 0)  # predict: one of the two images is not an image
    assert code == expected and "Traceback" not in output, output
    found = CONTROL.search(output)
    assert found is None, f"{found.group(0)!r} reached the terminal: {output[max(found.start() - 60, 0):found.end() + 20]!r}"
    forged = [line for line in output.splitlines() if line.lstrip().startswith(FORGED)]
    assert not forged, f"a newline in a name forged a line: {forged}"
    if command not in ("list", "push"):
        assert "\\x1b" in output, output  # the outside text was printed, shown
    if command in ("eval", "info", "data-report"):
        assert "[red]mark[blink]\\rcr\\x07" in output  # as written, never styled; \r and BEL shown, not dropped


def test_every_console_the_product_makes_is_gated() -> None:
    """The gate is structural: no module but aperture_zoo/terminal.py builds a rich Console or prints raw."""
    offenders = []
    for folder in ("aperture_zoo", "train", "export"):
        for path in (ROOT / folder).rglob("*.py"):
            if path.name in ("terminal.py", "runtime_worker.py"):  # the gate; a worker writing JSON to its parent
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Call):
                    f = node.func
                    name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
                    if name in ("Console", "print") and not (isinstance(f, ast.Attribute) and name == "print"):
                        offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}(")
    assert not offenders, offenders


def test_the_gate_shows_every_control_and_bidi_character(capsys: pytest.CaptureFixture[str]) -> None:
    import warnings

    from aperture_zoo.terminal import console, gate_warnings, markup, shown

    with warnings.catch_warnings():  # a library warning quoting a class name (matplotlib: a missing glyph)
        warnings.simplefilter("always")
        gate_warnings()
        warnings.warn("Glyph 27 (\x1b) missing \u202e")
    assert CONTROL.search(capsys.readouterr().err.replace("\n", "")) is None

    text = "".join(map(chr, range(0x20))) + "\x7f\x85\u202e\u2066\u200f\ufeff[red]x[/]"
    assert CONTROL.search(shown(text).replace("\n", "")) is None and "\\t" in shown(text)
    assert shown("schiff ü 猫") == "schiff ü 猫" and markup("[b]x.png") == "\\[b]x.png"
    import io

    out = io.StringIO()
    console(file=out, width=200).print(f"[bold]{markup(text)}[/]", "\x1b[2J", markup=True)
    assert CONTROL.search(out.getvalue().replace("\n", "").replace("\t", "")) is None and "[red]x[/]" in out.getvalue()
    np.testing.assert_equal(shown("\x1b"), "\\x1b")


@settings(max_examples=examples(300), deadline=None)
@given(text=st.text(max_size=40) | st.lists(st.sampled_from(["\x1b[", "31m", "]0;", "\x07", "\r", "\t", "[/]", "[red]",
                                                             "\u202e", "\u2066", "\x9b", "\\", "\n"]), max_size=8).map("".join))
@example(text="[/]")  # unbalanced markup: rich raises MarkupError when it is read as markup
def test_no_text_passes_the_gate_as_control_bytes_or_markup(text: str) -> None:
    import io

    from aperture_zoo.terminal import console, markup, shown

    out = io.StringIO()
    gated = console(file=out, width=60, color_system=None)
    gated.print(f"[bold]x {markup(text)}[/]", highlight=False)  # outside text in a markup string
    gated.print(text, markup=False, highlight=False)             # outside text printed as it is
    assert CONTROL.search(out.getvalue()) is None
    single = shown(text.replace("\n", " "))
    assert "\n" not in single and CONTROL.search(single) is None and shown(single) == single  # shown once is enough


def test_emoji_codes_in_outside_text_are_printed_as_written(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Regression: rich turned `photo :thumbs_up:.png` into `photo 👍.png` in predict, eval and "wrote" lines."""
    from aperture_zoo.cli.common import safe
    from aperture_zoo.terminal import console

    console().print(f"wrote {safe('ev :fire:/eval.json')}: {safe('dogg :smile:')}", highlight=False)
    out = capsys.readouterr().out
    assert "ev :fire:/eval.json" in out and "dogg :smile:" in out, out
    x, y = make_images(2, 1)
    png = write_png_folder(tmp_path / "d", x, y, ["c0", "c1"], 1) / "c0"
    image = next(png.iterdir()).rename(png / "photo :thumbs_up:.png")
    code, output = _run(["predict", str(image), "--model", "resnet10"])
    assert code == 0 and "photo :thumbs_up:.png" in output, output
