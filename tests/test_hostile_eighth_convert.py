"""The eighth hostile try's convert findings: a mean/std in 0-255 units (every prediction garbage, no word),
class names that no output can tell apart, a non-string name written into a file every reader refuses,
and the small ones (a FIFO, a safetensors file, the API's mean without std, a bool or text temperature)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from aperture_zoo.calibrators import TemperatureError
from aperture_zoo.cli import app
from aperture_zoo.convert import convert_checkpoint
from aperture_zoo.model import create_model
from aperture_zoo.registry import SpecError, get_spec
from aperture_zoo.weights import WeightsError, save_weights

SMALL = {"channels": (8, 8, 8, 8)}
PIXEL_MEAN, PIXEL_STD = "125.3,123.0,113.9", "63.0,62.1,66.7"  # CIFAR-10's statistics in 0-255 units


@pytest.fixture
def pth(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    torch.save(create_model("resnet10", num_classes=2, **SMALL).state_dict(), tmp_path / "r1.pth")
    return tmp_path / "r1.pth"


def _convert(pth: Path, out: Path, *extra: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["convert", str(pth), str(out), "--model", "resnet10", "--num-classes", "2",
                                      "--arch", "channels=8,8,8,8", *extra])
    return result.exit_code, " ".join(result.output.split())


def test_convert_refuses_mean_std_in_0_255_units_and_gives_the_values_divided(pth: Path, tmp_path: Path) -> None:
    code, out = _convert(pth, tmp_path / "m.safetensors", "--mean", PIXEL_MEAN, "--std", PIXEL_STD)
    assert code == 2, out
    assert out.startswith("error: resnet10: mean/std are for pixels in [0, 1]: mean 125.3,123,113.9 and std "
                          "63,62.1,66.7 look like 0-255 units; divide by 255: mean 0.4914,0.4824,0.4467 "
                          "std 0.2471,0.2435,0.2616"), out
    assert not (tmp_path / "m.safetensors").exists()


@pytest.mark.parametrize("mean, std, message", [
    ((128.0,) * 3, (64.0,) * 3, "look like 0-255 units; divide by 255: mean 0.502,0.502,0.502 std 0.251,0.251,0.251"),
    ((0.5,) * 3, (63.0, 62.1, 66.7), "std 63,62.1,66.7 looks like 0-255 units; divide by 255: std 0.2471"),
    ((-5.0, 0.5, 0.5), (0.2,) * 3, "so mean lies in [0, 1] and std in (0, 1]; got mean -5,0.5,0.5"),
    ((0.5,) * 3, (300.0,) * 3, "so mean lies in [0, 1] and std in (0, 1]; got std 300,300,300"),
])
def test_every_spec_refuses_a_normalisation_outside_pixels_in_0_1(mean: tuple, std: tuple, message: str,
                                                                   pth: Path, tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="mean/std are for pixels in") as exc:
        get_spec("resnet10").replace(mean=mean, std=std)
    assert message in str(exc.value)
    with pytest.raises(SpecError, match="mean/std are for pixels in"):  # the Python convert API: same check
        convert_checkpoint(pth, tmp_path / "m.safetensors", "resnet10", num_classes=2, mean=mean, std=std, **SMALL)
    assert not (tmp_path / "m.safetensors").exists()
    get_spec("resnet10").replace(mean=(0.0,) * 3, std=(1.0,) * 3)  # no normalisation at all is sound


def test_a_file_recording_mean_in_0_255_units_is_neither_written_nor_read(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    import aperture_zoo

    model = create_model("resnet10", **SMALL)
    with pytest.raises(WeightsError, match=r"was not written: every reader would refuse its metadata .*0-255 units"):
        save_weights(model, tmp_path / "bad.safetensors", {"mean": json.dumps([125.3, 123.0, 113.9])})
    assert not (tmp_path / "bad.safetensors").exists()
    good = save_weights(model, tmp_path / "good.safetensors")
    from aperture_zoo.weights import read_metadata

    meta = read_metadata(good) | {"mean": "[125.3, 123.0, 113.9]", "std": "[63.0, 62.1, 66.7]"}  # edited by hand
    save_file(load_file(good), str(tmp_path / "edited.safetensors"), metadata=meta)
    with pytest.raises(SpecError, match="look like 0-255 units; divide by 255"):
        aperture_zoo.load(str(tmp_path / "edited.safetensors"))


@pytest.mark.parametrize("names, message", [
    ("cat,cat", "class name 'cat' appears twice: every output would show two identical-looking classes"),
    (",dog", "class names must be non-empty strings, got '' in ['', 'dog']"),
    ("caf\u00e9,cafe\u0301", "class names 'caf\\xe9' and 'cafe\\u0301' are one name in two Unicode forms"),
])
def test_convert_refuses_class_names_no_output_can_tell_apart(names: str, message: str, pth: Path, tmp_path: Path) -> None:
    code, out = _convert(pth, tmp_path / "m.safetensors", "--class-names", names)
    assert code == 2 and out.startswith("error: resnet10: ") and message in out, out
    assert not (tmp_path / "m.safetensors").exists()


def test_the_api_refuses_a_class_name_that_is_not_a_string_before_writing(pth: Path, tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"class names must be non-empty strings, got 7 in \['cat', 7\]"):
        convert_checkpoint(pth, tmp_path / "m.safetensors", "resnet10", num_classes=2, class_names=["cat", 7], **SMALL)
    assert not (tmp_path / "m.safetensors").exists()


def test_convert_api_refuses_mean_without_std_like_the_command_line(pth: Path, tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="mean given without std; give both"):
        convert_checkpoint(pth, tmp_path / "m.safetensors", "resnet10", num_classes=2, mean=(0.5,) * 3, **SMALL)
    code, out = _convert(pth, tmp_path / "m.safetensors", "--std", "0.2,0.2,0.2")
    assert code == 2 and "error: std given without mean; give both" in out, out
    assert not (tmp_path / "m.safetensors").exists()


def test_convert_names_a_fifo_and_a_safetensors_file_for_what_they_are(pth: Path, tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo.pth")
    code, out = _convert(tmp_path / "fifo.pth", tmp_path / "a.safetensors")
    assert code == 2 and "is not a regular file" in out and "does not exist" not in out, out
    weights = save_weights(create_model("resnet10", num_classes=2, **SMALL), tmp_path / "w.safetensors")
    code, out = _convert(weights, tmp_path / "b.safetensors")
    assert code == 2 and "is already a safetensors file, not a pickle checkpoint: use it directly" in out, out
    assert "pickle:" not in out


def test_convert_names_a_file_with_a_one_byte_safetensors_header_as_safetensors(tmp_path: Path) -> None:
    """The shortest header a safetensors length prefix can announce (1 byte, "{"): not a pickle, said so."""
    src = tmp_path / "tiny.pth"
    src.write_bytes((1).to_bytes(8, "little") + b"{")
    with pytest.raises(WeightsError) as info:
        convert_checkpoint(src, tmp_path / "out.safetensors", "resnet10")
    assert str(info.value) == (f"{str(src)!r} is already a safetensors file, not a pickle checkpoint: use it directly "
                               f"(aperture predict IMAGE --model {src}; aperture_zoo.load(PATH))")


@pytest.mark.parametrize("temperature", [True, "2", b"2"])
def test_predict_proba_refuses_a_temperature_that_is_not_a_real_number(temperature: object) -> None:
    from aperture_zoo import predict_proba

    model = create_model("resnet10", **SMALL)
    with pytest.raises(TemperatureError, match=r"temperature must be a real number above 0 \(e.g. temperature=1.5\)"):
        predict_proba(model, torch.zeros(1, 3, 32, 32), temperature=temperature)


@pytest.mark.parametrize("temperature", [1e-300, 5e-324, 0.009, 100.5, 1e300])
def test_a_callers_temperature_out_of_range_is_the_callers_to_change(temperature: float) -> None:
    """Regression (ninth hostile try, N8): temperature=1e-300 was refused with "re-fit it", as if a file held it."""
    from aperture_zoo import predict_proba

    model = create_model("resnet10", **SMALL)
    with pytest.raises(TemperatureError) as info:
        predict_proba(model, torch.zeros(1, 3, 32, 32), temperature=temperature)
    assert f"temperature must lie within [0.01, 100] (beyond, every answer is one-hot or uniform), got {temperature!r}; " \
           "pass e.g. temperature=1.5" == str(info.value)
    for fine in (0.01, 100.0, 1.5):
        assert predict_proba(model, torch.zeros(1, 3, 32, 32), temperature=fine).shape == (1, 10)


def test_the_card_of_converted_weights_names_their_source_and_claims_no_dataset(tmp_path: Path) -> None:
    import hashlib

    from aperture_zoo.cards import write_card

    torch.manual_seed(0)
    src = tmp_path / "<b>ck|pt.pth"  # a file name is outside text: escaped like any other
    torch.save(create_model("resnet10", **SMALL).state_dict(), src)  # a 10-class head, CIFAR-10's names by default
    card = tmp_path / "card"
    card.mkdir()
    convert_checkpoint(src, card / "model.safetensors", "resnet10", **SMALL)
    write_card("resnet10", card)
    readme = (card / "README.md").read_text()
    front, body = readme.split("---\n", 2)[1:]
    assert "cifar10" not in front and "datasets:" not in front
    sha = hashlib.sha256(src.read_bytes()).hexdigest()
    assert (f"were converted from the PyTorch checkpoint &lt;b&gt;ck\\|pt.pth (SHA-256 `{sha}`): trained "
            "elsewhere, on data they do not record, and never evaluated here.") in body
    assert f"| converted from | PyTorch checkpoint &lt;b&gt;ck\\|pt.pth, SHA-256 {sha} |" in body
    assert "trained outside aperture_zoo, on data they do not record, and were not evaluated" in body
    assert "untrained" not in body and "chance level" not in body and "<b>" not in body
