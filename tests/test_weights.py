from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from profiles import examples

import aperture_zoo
from aperture_zoo import WeightsError, create_model, load, load_weights, read_metadata, save_weights
from aperture_zoo.files import file_sha256
from aperture_zoo.pretrained import MODEL_CARDS_DIR

_SMALL_FILE = MODEL_CARDS_DIR / "resnet10" / "model.safetensors"  # a real published file (~20 MB read once)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(1)
    model = create_model("resnet22")
    path = tmp_path_factory.mktemp("w") / "model.safetensors"
    save_weights(model, path, {"test_top1": 94.5, "recipe": {"name": "fast", "epochs": 18}})
    return model, path


def test_round_trip_is_exact_and_eval_mode(saved: tuple[torch.nn.Module, Path]) -> None:
    model, path = saved
    loaded = load("resnet22", weights=path)
    assert not loaded.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded(x), model.eval()(x))


def test_metadata_is_self_describing(saved: tuple[torch.nn.Module, Path]) -> None:
    _, path = saved
    meta = read_metadata(path)
    assert meta["arch"] == "resnet22" and meta["dataset"] == "cifar10"
    assert json.loads(meta["spec"])["channels"] == [64, 128, 192, 256]
    assert int(meta["num_params"]) == 4_922_826
    assert json.loads(meta["mean"]) == [0.4914, 0.4822, 0.4465]
    assert json.loads(meta["test_top1"]) == 94.5
    assert json.loads(meta["recipe"]) == {"epochs": 18, "name": "fast"}
    assert meta["torch_version"] == torch.__version__
    assert meta["package_version"] == aperture_zoo.__version__
    assert all(isinstance(v, str) for v in meta.values())


def test_load_by_name_builds_the_model(saved: tuple[torch.nn.Module, Path]) -> None:
    _, path = saved
    model = load_weights("resnet22", path)
    assert model.spec.name == "resnet22" and model.weights_metadata["arch"] == "resnet22"


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match=r"does not exist; check the path"):
        load("resnet22", weights=tmp_path / "nope.safetensors")


def test_pickle_checkpoint_is_refused_never_unpickled(tmp_path: Path) -> None:
    class Boom:
        def __reduce__(self):  # would run on unpickling
            return (Path(tmp_path / "pwned").touch, ())

    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"x": Boom()}, protocol=4))
    with pytest.raises(WeightsError, match="pickle checkpoint, not safetensors"):
        load("resnet22", weights=evil)
    assert not (tmp_path / "pwned").exists()
    torch.save(create_model("resnet10").state_dict(), tmp_path / "model.pt")
    with pytest.raises(WeightsError, match="unpickling can run arbitrary code"):
        load("resnet10", weights=tmp_path / "model.pt")


@pytest.mark.parametrize("keep", [0.5, 0.001])
def test_truncated_file(saved: tuple[torch.nn.Module, Path], tmp_path: Path, keep: float) -> None:
    _, path = saved
    data = path.read_bytes()
    bad = tmp_path / "truncated.safetensors"
    bad.write_bytes(data[: max(9, int(len(data) * keep))])
    with pytest.raises(WeightsError, match="truncated or corrupt"):
        load("resnet22", weights=bad)


@pytest.mark.parametrize(
    "data",
    [
        b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}" + b"\x00" * 64,  # bad header
        b"",  # empty
        b"\x80\xff" + bytes(range(64)),  # starts like a pickle opcode but is not one
        (10**12).to_bytes(8, "little") + b"{}",  # header length past the end of the file
    ],
    ids=["bad-header", "empty", "0x80-garbage", "huge-header"],
)
def test_garbage_file(tmp_path: Path, data: bytes) -> None:
    bad = tmp_path / "garbage.safetensors"
    bad.write_bytes(data)
    with pytest.raises(WeightsError, match="not a readable safetensors file.*truncated or corrupt"):
        read_metadata(bad)
    with pytest.raises(WeightsError, match="not a readable safetensors file"):
        load("resnet10", weights=bad)


def test_directory_instead_of_file(tmp_path: Path) -> None:
    """A folder is a source like local-dir:DIR: without a weights file in it, the error says where it looked."""
    with pytest.raises(WeightsError, match="holds no weights for resnet22: expected .*model.safetensors"):
        load("resnet22", weights=tmp_path)


def test_weights_of_another_architecture(saved: tuple[torch.nn.Module, Path]) -> None:
    _, path = saved
    with pytest.raises(WeightsError, match=r"architecture 'resnet22', not 'resnet24'.*blocks"):
        load("resnet24", weights=path)


def test_wrong_num_classes(saved: tuple[torch.nn.Module, Path]) -> None:
    _, path = saved
    with pytest.raises(WeightsError, match=r"trained for 10 classes but the model has 100"):
        load_weights(create_model("resnet22", num_classes=100), path)
    # Fine-tuning path: everything but the head.
    model = load_weights(create_model("resnet22", num_classes=100), path, strict=False)
    assert model.fc.out_features == 100


def test_bare_safetensors_with_other_keys_names_them(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    state = create_model("resnet10").state_dict()
    state = {k.replace("layer1.", "stage1."): v for k, v in state.items()}
    save_file(state, str(tmp_path / "bare.safetensors"))
    with pytest.raises(WeightsError, match=r"missing keys: layer1\..*unexpected keys: stage1\."):
        load("resnet10", weights=tmp_path / "bare.safetensors")


def test_damaged_metadata_is_named(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    state = create_model("resnet10").state_dict()
    save_file(state, str(tmp_path / "bad.safetensors"), metadata={"arch": "resnet10", "spec": "{oops"})
    with pytest.raises(WeightsError, match=r"damaged 'spec' entry in its metadata"):
        load("resnet10", weights=tmp_path / "bad.safetensors")


def test_save_replaces_atomically(saved: tuple[torch.nn.Module, Path], tmp_path: Path) -> None:
    model, _ = saved
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"old")
    save_weights(model, target, {"seed": 0})
    assert read_metadata(target)["seed"] == "0"
    assert not list(tmp_path.glob("*.tmp"))
    assert len(file_sha256(target)) == 64


def test_pretrained_without_published_weights_is_honest(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from ports import refusing_port

    # never ask the real Hub from a test: point it at a refusing port (not HF_HUB_OFFLINE: huggingface_hub reads
    # it once, when first imported, for the whole session)
    with refusing_port() as port, pytest.raises(aperture_zoo.NoPretrainedWeightsError, match="published weights "
                                                "resnet22.fast could not be fetched") as info:
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
        monkeypatch.delenv("APERTURE_WEIGHTS_DIR", raising=False)
        load("resnet22", pretrained=True, cards_dir=tmp_path)  # published but unreachable, no checkout copy: said plainly
    assert "cannot be reached" in str(info.value) and "weights=PATH" in str(info.value)


def test_weights_files_follow_the_umask_like_every_other_output(tmp_path) -> None:
    """Found by a user: model.safetensors came out -rw------- (unreadable by a serving user)."""
    import os

    from aperture_zoo.model import create_model
    from aperture_zoo.weights import save_weights

    mask = os.umask(0o022)
    try:
        path = save_weights(create_model("resnet10", channels=(8, 8, 8, 8)), tmp_path / "model.safetensors")
        assert oct(path.stat().st_mode & 0o777) == oct(0o644)
    finally:
        os.umask(mask)


@settings(max_examples=examples(80), deadline=None)
@given(data=st.binary(max_size=400), cut=st.integers(min_value=0, max_value=4000))
def test_any_bytes_load_or_fail_with_one_clear_line(data: bytes, cut: int) -> None:
    """The one reader of weights bytes: garbage, or a real file cut short, is a WeightsError, never a crash."""
    from aperture_zoo.weights import state_dict_from_bytes

    real = _SMALL_FILE.read_bytes()
    for blob in (data, real[:cut]):
        try:
            tensors, meta = state_dict_from_bytes(blob, "x.safetensors")
        except WeightsError as exc:
            assert "'x.safetensors'" in str(exc) and "\n" not in str(exc)
        else:
            assert isinstance(tensors, dict) and isinstance(meta, dict)
    tensors, meta = state_dict_from_bytes(real, "x.safetensors")
    assert meta["arch"] == "resnet10" and set(tensors) == set(create_model("resnet10").state_dict())


@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan")])
def test_weights_holding_infinity_or_nan_are_refused_at_load(tmp_path: Path, bad: float) -> None:
    """Not only NaN: an infinite weight loads and runs too, and every answer is then NaN or saturated."""
    model = create_model("resnet10", num_classes=3)
    with torch.no_grad():
        model.layer1[0].conv1.weight[0, 0, 0, 0] = bad
    path = save_weights(model, tmp_path / "model.safetensors")
    with pytest.raises(WeightsError, match="non-finite values .*layer1.0.conv1.weight"):
        load(str(path))


def test_calibrated_weights_never_replace_a_file_and_the_refusal_says_what_to_do(
        saved: tuple[torch.nn.Module, Path], tmp_path: Path) -> None:
    from aperture_zoo.weights import write_with_temperature

    _, src = saved
    taken = tmp_path / "taken.safetensors"
    taken.write_bytes(b"someone's file")
    dangling = tmp_path / "dangling.safetensors"
    dangling.symlink_to(tmp_path / "elsewhere" / "x.safetensors")
    for dst in (taken, src, dangling):  # an existing file, the source itself, a link to a file that is not there
        with pytest.raises(WeightsError) as info:
            write_with_temperature(src, dst, 1.5, "test images", file_sha256(src))
        assert str(info.value) == (f"{str(dst)!r} already exists; the calibrated weights go to a new file, so name "
                                   "one that does not exist yet")
    assert taken.read_bytes() == b"someone's file" and not (tmp_path / "elsewhere").exists()


def test_calibrated_weights_record_the_temperature_to_six_decimals_like_a_training_run(
        saved: tuple[torch.nn.Module, Path], tmp_path: Path) -> None:
    """A training run records its fitted temperature rounded to 6 decimals (below the fit's own 1e-5
    tolerance on log T); `eval --write-temperature` records its own the same way, so the two files agree."""
    from aperture_zoo.weights import decode_metadata, write_with_temperature

    _, src = saved
    dst = write_with_temperature(src, tmp_path / "t.safetensors", 1.23456789, "72 test images", file_sha256(src))
    meta = decode_metadata(read_metadata(dst))
    assert meta["temperature"] == 1.234568 and load(str(dst)).temperature == 1.234568
    assert (meta["temperature_fitted_on"], meta["temperature_fitted_for_sha256"]) == ("72 test images", file_sha256(src))


def test_a_fresh_model_saved_names_cifar10_only_when_its_head_is_cifar10s(tmp_path: Path) -> None:
    """A model never loaded from a file records the dataset its head answers, and none for a head of its own."""
    from aperture_zoo.weights import decode_metadata

    plain = save_weights(create_model("resnet10", channels=(8, 8, 8, 8)), tmp_path / "plain.safetensors")
    assert decode_metadata(read_metadata(plain))["dataset"] == "cifar10"
    assert load(str(plain)).spec.label_names[0] == "airplane"
    own = create_model("resnet10", channels=(8, 8, 8, 8), num_classes=2, class_names=("cat", "dog"))
    meta = decode_metadata(read_metadata(save_weights(own, tmp_path / "own.safetensors")))
    assert "dataset" not in meta and meta["label_names"] == ["cat", "dog"]


def test_a_failed_weights_write_is_the_os_error_it_is(tmp_path: Path) -> None:
    """safetensors reports I/O failures as its own error type; callers (one-line messages, nothing lost)
    need the OSError with its errno and the file's name."""
    from aperture_zoo.errors import os_error
    from aperture_zoo.weights import write_safetensors

    target = tmp_path / "no-such-folder" / "model.safetensors"
    with pytest.raises(FileNotFoundError) as info:
        write_safetensors({"a": torch.zeros(4)}, target, {})
    assert (info.value.errno, info.value.filename) == (2, str(target))
    assert str(target) in str(os_error(info.value))
