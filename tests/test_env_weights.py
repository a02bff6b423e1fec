"""$APERTURE_WEIGHTS_DIR answers an architecture's name, never a published tag (a tag names its pinned file), and
every command it answers says, once, that those are not the published weights; `info` shows that file's own spec."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from aperture_zoo.catalog import get_weights
from aperture_zoo.cli import app
from aperture_zoo.files import file_sha256
from aperture_zoo.model import create_model
from aperture_zoo.pretrained import (MODEL_CARDS_DIR, PublishedWeightsUnavailableError, fetch_weights,
                                     unpublished_note)
from aperture_zoo.samples import SAMPLES_DIR
from aperture_zoo.weights import save_weights

RECORD = get_weights("resnet10")  # resnet10.fast: SHA-256 pinned
NOT_PUBLISHED = "NOT the published weights"
IMAGE = str(next(SAMPLES_DIR.glob("*.png")))


@pytest.fixture
def env_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A tiny 2-class resnet10 (cat, dog, its own mean/std) where `$APERTURE_WEIGHTS_DIR` finds it; the Hub off."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    torch.manual_seed(0)
    model = create_model("resnet10", channels=(8, 8, 8, 8), num_classes=2, class_names=("cat", "dog"),
                         mean=(0.6, 0.6, 0.5), std=(0.3, 0.3, 0.3))
    path = save_weights(model, tmp_path / "w" / "resnet10" / "model.safetensors")
    monkeypatch.setenv("APERTURE_WEIGHTS_DIR", str(tmp_path / "w"))
    return path


def _run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_a_tag_names_the_pinned_file_never_the_env_dir_one(env_file: Path, tmp_path: Path) -> None:
    tag = fetch_weights(RECORD.tag)
    assert tag.sha256 == RECORD.sha256 and unpublished_note(tag) is None
    name = fetch_weights("resnet10")  # the README's way to use your own weights by name
    note = unpublished_note(name)
    assert name.path == env_file and note is not None and NOT_PUBLISHED in note and RECORD.tag in note
    with pytest.raises(PublishedWeightsUnavailableError):  # nothing pinned within reach: refused, not the env file
        fetch_weights(RECORD.tag, cards_dir=tmp_path / "empty")
    shutil.copyfile(MODEL_CARDS_DIR / "resnet10" / "model.safetensors", env_file)
    assert unpublished_note(fetch_weights("resnet10")) is None  # the published bytes, copied there: nothing to say


def test_predict_and_card_of_a_tag_use_the_published_weights(env_file: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    code, with_env, err = _run("predict", IMAGE, "--model", RECORD.tag)
    assert code == 0 and NOT_PUBLISHED not in err and "cat" not in with_env.split("(")[0].split(":")[1]
    code, card_err = _run("card", RECORD.tag, "--out", str(tmp_path / "card"))[::2]
    readme = (tmp_path / "card" / "README.md").read_text()
    assert code == 0 and RECORD.sha256 in readme and file_sha256(env_file) not in readme, card_err
    monkeypatch.delenv("APERTURE_WEIGHTS_DIR")
    assert _run("predict", IMAGE, "--model", RECORD.tag)[1] == with_env  # the same answer with no env dir at all


@pytest.mark.parametrize("command", [("predict", IMAGE, "--model", "resnet10"),
                                     ("samples", "resnet10", "--show", "resnet10"), ("info", "resnet10")])
def test_every_command_the_env_dir_file_answers_says_so_once(env_file: Path, command: tuple[str, ...]) -> None:
    code, out, err = _run(*command)
    assert code == 0 and (out + err).count(NOT_PUBLISHED) == 1, out + err
    assert any(label in out for label in ("cat", "dog")) or command[0] == "info"


def test_info_shows_the_env_dir_files_own_spec(env_file: Path) -> None:
    """Regression: `info resnet10` printed the registry's spec (channels 64..512, 10 classes, 4.9 M parameters,
    CIFAR-10's mean) above the metadata of a 2-class, 8-channel file."""
    code, out, _ = _run("info", "resnet10")
    lines = {line.split()[0]: line.split(None, 1)[1] for line in out.splitlines()[1:11]}
    assert code == 0 and lines["channels"] == "[8, 8, 8, 8]" and lines["num_classes"] == "2"
    assert lines["mean"] == "[0.6, 0.6, 0.5]" and "cat, dog" in out and "4,903,242" not in out
