"""The seventh hostile try's low findings: a converted checkpoint traced to its bytes and given its own
normalisation, an ONNX file passed where safetensors are read, ``preprocess`` of a wrapped model or a
name, and a Hub server that names a commit outside the cache."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from aperture_zoo.cli import app
from aperture_zoo.convert import assumed_normalisation, convert_checkpoint, data_overrides
from aperture_zoo.model import create_model
from aperture_zoo.weights import WeightsError, read_metadata
from profiles import examples

SMALL = {"channels": (8, 8, 8, 8)}


@pytest.fixture
def two_class_pth(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    torch.save(create_model("resnet10", num_classes=2, **SMALL).state_dict(), tmp_path / "r1.pth")
    return tmp_path / "r1.pth"


def test_convert_records_the_sha256_of_the_checkpoint(two_class_pth: Path, tmp_path: Path) -> None:
    out = convert_checkpoint(two_class_pth, tmp_path / "m.safetensors", "resnet10", num_classes=2, **SMALL)
    meta = read_metadata(out)
    assert meta["converted_from"] == "r1.pth"
    assert meta["converted_from_sha256"] == hashlib.sha256(two_class_pth.read_bytes()).hexdigest()


def test_convert_takes_the_normalisation_and_class_names_it_was_trained_with(two_class_pth: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.safetensors"
    result = CliRunner().invoke(app, ["convert", str(two_class_pth), str(out), "--model", "resnet10", "--num-classes", "2",
                                      "--arch", "channels=8,8,8,8", "--mean", "0.5,0.4,0.3", "--std", "0.2,0.25,0.3",
                                      "--class-names", "cat,dog"])
    assert result.exit_code == 0, result.output
    assert "note:" not in result.output
    meta = read_metadata(out)
    assert json.loads(meta["mean"]) == [0.5, 0.4, 0.3] and json.loads(meta["std"]) == [0.2, 0.25, 0.3]
    assert json.loads(meta["label_names"]) == ["cat", "dog"]
    import aperture_zoo

    model = aperture_zoo.load(str(out))
    assert model.spec.mean == (0.5, 0.4, 0.3) and model.spec.class_names == ("cat", "dog")


def test_convert_says_when_it_assumed_cifar10_normalisation_for_another_head(two_class_pth: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["convert", str(two_class_pth), str(tmp_path / "m.safetensors"), "--model",
                                      "resnet10", "--num-classes", "2", "--arch", "channels=8,8,8,8"])
    assert result.exit_code == 0, result.output
    assert "note: the checkpoint holds no normalisation, so CIFAR-10's" in result.output and "--mean and --std" in result.output
    assert assumed_normalisation("resnet10") is None  # CIFAR-10's own head: its normalisation is right
    assert assumed_normalisation("resnet10", num_classes=2, mean=(0.5,) * 3, std=(0.2,) * 3) is None


def test_convert_mean_without_std_is_one_line(two_class_pth: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["convert", str(two_class_pth), str(tmp_path / "m.safetensors"), "--model",
                                      "resnet10", "--num-classes", "2", "--arch", "channels=8,8,8,8", "--mean", "0.5,0.5,0.5"])
    assert result.exit_code == 2 and "mean given without std; give both" in result.output
    assert not (tmp_path / "m.safetensors").exists()


@settings(max_examples=examples(60), deadline=None)
@given(mean=st.text(max_size=30), std=st.text(max_size=30), names=st.one_of(st.none(), st.text(max_size=30)))
def test_convert_options_parse_or_refuse_in_one_line(mean: str, std: str, names: str | None) -> None:
    try:
        out = data_overrides(mean, std, names)
    except WeightsError as exc:
        assert "\n" not in str(exc) and "e.g." in str(exc)
    else:
        assert len(out["mean"]) == len(mean.split(",")) and all(isinstance(v, float) for v in out["std"])


@pytest.fixture
def onnx_file(tmp_path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 32, 32])])
    onnx.save(helper.make_model(graph), tmp_path / "resnet10.onnx")
    return tmp_path / "resnet10.onnx"


@pytest.mark.parametrize("args", [["predict", "IMG", "--model", "ONNX"], ["predict", "IMG", "--weights", "ONNX"],
                                  ["info", "ONNX"]])
def test_an_onnx_file_where_weights_are_read_is_named_an_onnx_file(onnx_file: Path, tmp_path: Path,
                                                                    args: list[str]) -> None:
    from PIL import Image

    Image.new("RGB", (32, 32)).save(tmp_path / "x.png")
    argv = [str(onnx_file) if a == "ONNX" else str(tmp_path / "x.png") if a == "IMG" else a for a in args]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 2, result.output
    line = " ".join(result.output.split())
    assert f"is an ONNX file, not safetensors weights; run it with --onnx: aperture predict IMAGE --onnx {onnx_file}" in line
    assert "corrupt" not in line


def test_load_of_an_onnx_file_says_so(onnx_file: Path) -> None:
    import aperture_zoo

    with pytest.raises(WeightsError, match="is an ONNX file, not safetensors weights"):
        aperture_zoo.load(str(onnx_file))


def test_a_git_lfs_pointer_where_weights_are_read_says_to_fetch_them(tmp_path: Path) -> None:
    """Ninth hostile try, N9: a checkout without git-lfs has pointer files, which were called "truncated or corrupt"."""
    import aperture_zoo

    pointer = tmp_path / "model.safetensors"
    pointer.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:" + "ab" * 32 + "\nsize 19766154\n")
    with pytest.raises(WeightsError, match=r"is a Git LFS pointer, not the weights: fetch them with `git lfs pull`"):
        aperture_zoo.load(str(pointer))
    result = CliRunner().invoke(app, ["info", str(pointer)])
    assert result.exit_code == 2 and "git lfs pull" in result.output and "corrupt" not in result.output


def test_preprocess_takes_a_wrapped_model_and_refuses_a_name_in_one_line() -> None:
    import numpy as np

    from aperture_zoo import preprocess
    from aperture_zoo.transforms import ModelArgumentError

    model = create_model("resnet10", num_classes=2, **SMALL).eval()
    model.spec = model.spec.replace(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))  # not CIFAR-10's
    pixels = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    want = preprocess(pixels, model)
    torch.testing.assert_close(preprocess(pixels, torch.nn.DataParallel(model)), want)
    torch.testing.assert_close(preprocess(pixels, torch.compile(model)), want)
    torch.testing.assert_close(preprocess(pixels, model.spec), want)
    with pytest.raises(ModelArgumentError, match=r"got the name 'resnet10', not a model; pass the model itself, "
                                                 r"e\.g\. model = aperture_zoo\.load\('resnet10', pretrained=True\)"):
        preprocess(pixels, "resnet10")
    with pytest.raises(ModelArgumentError, match="got type int, not a model"):
        preprocess(pixels, 3)  # type: ignore[arg-type]
