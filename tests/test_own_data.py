"""Your own images: folders and CIFAR-100 as datasets, fine-tuning, class names that travel with the weights.

Folders are written from CIFAR-10 test images (the real ones with APERTURE_CIFAR10_DIR, the synthetic
look-alike otherwise) as PNG files, so every image goes through the real decoder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from profiles import examples
from typer.testing import CliRunner

from aperture_zoo.cli import app
from aperture_zoo.data import load_split
from aperture_zoo.datasets import DatasetError, holdout_indices, load_dataset, read_cifar100
from aperture_zoo.folder import FolderError, _decode_one, decode_files, load_folder, scan_folder
from cifar_synth import write_cifar100, write_png_folder
from hub_fixtures import hub_server  # noqa: F401 - a local Hub for the push of a folder run

# spaces, unicode and rich markup in class names: shown exactly as written everywhere
NAMES = ["[bold]dog", "a cat", "schiff ü"]
CIFAR_INDEX = {"[bold]dog": 5, "a cat": 3, "schiff ü": 8}


@pytest.fixture(scope="module")
def test_images(synthetic_cifar: Path) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 test images (never trained on by the published weights) with their labels."""
    real = os.environ.get("APERTURE_CIFAR10_DIR")
    split = load_split("test", real if real else synthetic_cifar)
    return split.images, split.labels


def _folder(root: Path, test_images: tuple[np.ndarray, np.ndarray], per_class: int = 10,
            names: list[str] = NAMES) -> Path:
    x, y = test_images
    keep = np.concatenate([np.flatnonzero(y == CIFAR_INDEX.get(n, i))[:per_class] for i, n in enumerate(names)])
    remap = {CIFAR_INDEX.get(n, k): k for k, n in enumerate(names)}
    return write_png_folder(root, x[keep], np.array([remap[int(v)] for v in y[keep]]), names, per_class)


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APERTURE_DATA", str(tmp_path / "data-cache"))
    # the published weights from this checkout's model_cards/, without a Hub round trip
    monkeypatch.setenv("APERTURE_WEIGHTS_DIR", str(Path(__file__).resolve().parent.parent / "model_cards"))


# --------------------------------------------------------------------------- folders


def test_folder_classes_decode_and_cache(tmp_path: Path, test_images) -> None:
    root = _folder(tmp_path / "imgs", test_images)
    first = load_folder(root)
    assert first.scan.classes == tuple(sorted(NAMES)) and first.scan.layout == "pool"
    assert first.images.shape == (30, 3, 32, 32) and first.images.dtype == np.uint8
    assert not first.from_cache and first.cache_file is not None and first.cache_file.suffix == ".npz"
    # the pixels are the PNGs' own (lossless), in the class the folder names
    x, y = test_images
    cat = np.flatnonzero(y == 3)[0]
    assert any(np.array_equal(img, x[cat]) for img in first.images[first.labels == first.scan.classes.index("a cat")])
    again = load_folder(root)
    assert again.from_cache and np.array_equal(again.images, first.images)
    # the key is the content: a new modification time alone changes nothing ...
    victim = next((root / "a cat").iterdir())
    os.utime(victim, ns=(1, 1))
    assert load_folder(root).from_cache
    # ... while an image edited in place, same size and time restored, is decoded again
    st = victim.stat()
    data = bytearray(victim.read_bytes())
    other = next(p for p in (root / "[bold]dog").iterdir()).read_bytes()
    victim.write_bytes(other[:len(data)].ljust(len(data), b"\0"))
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert victim.stat().st_size == st.st_size and victim.stat().st_mtime_ns == st.st_mtime_ns
    assert not load_folder(root).from_cache


def test_a_cache_file_edited_after_it_was_written_is_decoded_again(tmp_path: Path, test_images) -> None:
    """The cache's own arrays carry a SHA-256: other pixels written into a valid .npz are never served."""
    root = _folder(tmp_path / "imgs", test_images)
    first = load_folder(root, cache_dir=tmp_path / "cache")
    assert first.cache_file is not None
    with np.load(first.cache_file, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["images"] = arrays["images"][::-1].copy()  # same shape, dtype and count: another image per file
    with open(first.cache_file, "wb") as f:
        np.savez(f, **arrays)
    again = load_folder(root, cache_dir=tmp_path / "cache")
    assert not again.from_cache and np.array_equal(again.images, first.images)
    assert load_folder(root, cache_dir=tmp_path / "cache").from_cache  # rewritten whole, served from then on


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_a_damaged_cache_file_is_decoded_again(tmp_path: Path, test_images, damage: str) -> None:
    """Regression: a truncated cache (a full disk, a killed copy) was a zipfile.BadZipFile traceback."""
    root = _folder(tmp_path / "imgs", test_images)
    first = load_folder(root, cache_dir=tmp_path / "cache")
    data = first.cache_file.read_bytes()
    first.cache_file.write_bytes({"truncated": data[:1000], "garbage": os.urandom(len(data)), "empty": b""}[damage])
    again = load_folder(root, cache_dir=tmp_path / "cache")
    assert not again.from_cache and np.array_equal(again.images, first.images)


def test_held_out_split_is_stratified_seeded_and_recorded(tmp_path: Path, test_images) -> None:
    root = _folder(tmp_path / "imgs", test_images)
    a = load_dataset(str(root), test_split=0.2, seed=3)
    b = load_dataset(str(root), test_split=0.2, seed=3)
    assert np.array_equal(a.test.images, b.test.images)
    assert np.bincount(a.test.labels).tolist() == [2, 2, 2] and len(a.train) == 24
    assert a.record["test_split"] == 0.2 and a.record["split_seed"] == 3 and a.record["layout"] == "pool"
    c = load_dataset(str(root), test_split=0.2, seed=4)
    assert not np.array_equal(a.test.images, c.test.images)
    mean, std = a.mean_std()
    assert len(mean) == 3 and all(0 < v < 1 for v in mean + std)


def test_given_train_and_test_folders_are_used_as_given(tmp_path: Path, test_images) -> None:
    _folder(tmp_path / "d" / "train", test_images, per_class=6)
    last = (test_images[0][::-1], test_images[1][::-1])  # other images than train/'s (copies would be dropped)
    _folder(tmp_path / "d" / "val", last, per_class=2, names=NAMES[:2])  # val/ lacks a class: fine
    ds = load_dataset(str(tmp_path / "d"))
    assert len(ds.train) == 18 and len(ds.test) == 4 and ds.record["test_dir"] == "val"
    with pytest.raises(DatasetError, match="used as given; drop --test-split"):
        load_dataset(str(tmp_path / "d"), test_split=0.3)


def test_a_test_class_that_train_lacks_is_refused(tmp_path: Path, test_images) -> None:
    _folder(tmp_path / "d" / "train", test_images, per_class=3, names=NAMES[:2])
    _folder(tmp_path / "d" / "test", test_images, per_class=2)
    with pytest.raises(FolderError, match="train/ lacks: 'schiff ü'"):
        scan_folder(tmp_path / "d")


def test_empty_and_single_class_folders_are_one_line_errors(tmp_path: Path, test_images) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(FolderError, match="no class folders"):
        scan_folder(tmp_path / "empty")
    _folder(tmp_path / "one", test_images, per_class=3, names=["a cat"])
    with pytest.raises(FolderError, match="single class folder"):
        scan_folder(tmp_path / "one")
    (tmp_path / "noimg" / "a").mkdir(parents=True)
    (tmp_path / "noimg" / "b").mkdir()
    (tmp_path / "noimg" / "a" / "notes.txt").write_text("hi")
    with pytest.raises(FolderError, match="no image files"):
        scan_folder(tmp_path / "noimg")


def test_bad_files_are_skipped_counted_and_named(tmp_path: Path, test_images, monkeypatch) -> None:
    from PIL import Image

    root = _folder(tmp_path / "imgs", test_images, per_class=4)
    good = next((root / "a cat").iterdir()).read_bytes()
    (root / "a cat" / "zero.png").write_bytes(b"")
    (root / "a cat" / "truncated.png").write_bytes(good[: len(good) // 2])
    (root / "a cat" / "garbage.jpg").write_bytes(b"not an image at all" * 10)
    Image.new("RGB", (80, 80)).save(root / "a cat" / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)  # 6,400 px > 2 x the limit: PIL's bomb error
    (root / "a cat" / "loop.png").symlink_to(root / "a cat" / "loop2.png")
    (root / "a cat" / "loop2.png").symlink_to(root / "a cat" / "loop.png")
    (root / "a cat" / "sub").symlink_to(root / "a cat", target_is_directory=True)  # a folder loop
    ds = load_dataset(str(root))
    reasons = dict(ds.skipped)
    assert len(ds.train) + len(ds.test) == 12 and ds.record["skipped"] == len(ds.skipped) == 7
    assert reasons["a cat/zero.png"].startswith("empty file")
    assert reasons["a cat/truncated.png"].startswith(("truncated", "not a decodable"))
    assert reasons["a cat/garbage.jpg"].startswith("not a decodable image")
    assert reasons["a cat/bomb.png"].startswith("decompression bomb")
    assert reasons["a cat/loop.png"] == reasons["a cat/loop2.png"] == "symlink loop" and "symlink loop" in reasons["a cat/sub"]


def test_a_folder_where_nothing_decodes_is_an_error(tmp_path: Path) -> None:
    for name in ("x", "y"):
        (tmp_path / "d" / name).mkdir(parents=True)
        (tmp_path / "d" / name / "a.png").write_bytes(b"")
    with pytest.raises(FolderError, match="none of the 2 files .* could be decoded"):
        load_folder(tmp_path / "d")


def test_parallel_decode_matches_inline(tmp_path: Path, test_images, monkeypatch) -> None:
    import aperture_zoo.folder as folder

    root = _folder(tmp_path / "imgs", test_images, per_class=8)
    paths = [str(p) for p in sorted(root.rglob("*.png"))]
    inline, _ = decode_files(paths, workers=1)
    monkeypatch.setattr(folder, "_INLINE_BELOW", 0)
    monkeypatch.setattr(folder, "_CHUNK", 5)
    seen: list[int] = []
    parallel, reasons = decode_files(paths, workers=2, progress=seen.append)
    assert np.array_equal(inline, parallel) and reasons == [None] * 24 and sum(seen) == 24


@settings(max_examples=examples(40), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=600))
def test_any_file_bytes_decode_or_are_skipped_with_a_reason(tmp_path_factory, data: bytes) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "x.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + data if data[:1] == b"\x00" else data)
    img, reason = _decode_one(str(path))
    assert (img is None) != (reason is None)
    if img is not None:
        assert img.shape == (3, 32, 32) and img.dtype == np.uint8


@settings(max_examples=examples(60), deadline=None)
@given(labels=st.lists(st.integers(0, 4), min_size=1, max_size=60), fraction=st.floats(0.05, 0.95),
       seed=st.integers(0, 3))
def test_holdout_partitions_every_class(labels: list[int], fraction: float, seed: int) -> None:
    y = np.array(labels)
    train, test = holdout_indices(y, fraction, seed)
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(len(y)))
    for c in np.unique(y):
        n = int((y == c).sum())
        if n >= 2:  # a class of two or more is on both sides
            assert (y[test] == c).any() and (y[train] == c).any()


# --------------------------------------------------------------------------- CIFAR-100


def test_cifar100_reads_fine_labels_and_names(tmp_path: Path) -> None:
    write_cifar100(tmp_path)
    ds = load_dataset("cifar100", tmp_path)
    assert len(ds.classes) == 100 and ds.classes[7] == "fine_07"
    assert len(ds.train) == 200 and len(ds.test) == 100 and set(ds.train.labels.tolist()) == set(range(100))


def test_cifar100_with_cifar10_files_says_so(synthetic_cifar: Path) -> None:
    with pytest.raises(DatasetError, match="holds CIFAR-10 .* not CIFAR-100"):
        load_dataset("cifar100", synthetic_cifar)
    result = CliRunner().invoke(app, ["train", "resnet10", "--dataset", "cifar100", "--data-dir", str(synthetic_cifar),
                                      "--no-download", "--device", "cpu", "--out", str(synthetic_cifar / "nope")])
    assert result.exit_code == 2 and "not CIFAR-100" in result.output and "Traceback" not in result.output


def test_cifar10_or_other_files_in_the_cifar100_folder_are_named_and_said_what_they_are(tmp_path: Path) -> None:
    import pickle

    folder = write_cifar100(tmp_path) / "cifar-100-python"
    with open(folder / "train", "wb") as f:  # a CIFAR-10 batch copied in place of CIFAR-100's train file
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}, f, protocol=2)
    with pytest.raises(DatasetError) as info:
        read_cifar100(folder, "train")
    assert str(info.value).startswith(f"{str(folder / 'train')!r} is a CIFAR-10 batch (no 'fine_labels'); ")
    with open(folder / "test", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8)}, f, protocol=2)
    with pytest.raises(DatasetError) as info:
        read_cifar100(folder, "test")
    assert str(info.value).startswith(f"{str(folder / 'test')!r} is not a CIFAR-100 file (no 'fine_labels'); ")


def test_a_failed_cifar100_download_names_the_folder_it_was_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets.utils as tv_utils

    from aperture_zoo.datasets import locate_cifar100

    def offline(*args, **kwargs):
        raise OSError("Temporary failure in name resolution")

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", offline)
    with pytest.raises(DatasetError) as info:
        locate_cifar100(tmp_path / "data", download=True)
    message = str(info.value)
    assert message.startswith(f"CIFAR-100 is not in {str(tmp_path / 'data')!r} and downloading it from ")
    assert "(Temporary failure in name resolution)" in message and "pass --data-dir (or --no-download)" in message


@settings(max_examples=examples(40), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=300))
def test_cifar100_parser_rejects_any_bytes_cleanly(tmp_path_factory, data: bytes) -> None:
    folder = tmp_path_factory.mktemp("c100")
    (folder / "train").write_bytes(data)
    with pytest.raises(DatasetError):
        read_cifar100(folder, "train")


# --------------------------------------------------------------------------- fine-tuning, names, export


def test_finetune_names_travel_to_eval_export_predict_demo_and_hub(tmp_path: Path, test_images, hub_server,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """--init resnet10.fast on a 3-class folder, then every later step shows the folder's class names."""
    from aperture_zoo import load
    from aperture_zoo.demo import add_onnx_files
    from aperture_zoo.registry import CIFAR10_MEAN

    root = _folder(tmp_path / "imgs", test_images, per_class=8)
    run = tmp_path / "run"
    runner = CliRunner()
    torch.set_num_threads(1)
    result = runner.invoke(app, ["train", "resnet10", "--dataset", str(root), "--init", "resnet10.fast", "--epochs", "1",
                                 "-b", "8", "--device", "cpu", "--out", str(run), "--no-progress"])
    assert result.exit_code == 0, result.output
    recipe = json.loads((run / "recipe.json").read_text())
    assert recipe["name"] == "finetune" and recipe["warmup_fraction"] > 0
    model = load("resnet10", weights=run / "model.safetensors")  # no num_classes: the file says 3
    assert model.spec.label_names == tuple(sorted(NAMES)) and model.spec.mean == CIFAR10_MEAN

    result = runner.invoke(app, ["eval", "resnet10", "--weights", str(run / "model.safetensors"), "--dataset", str(root),
                                 "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "on 6 test images" in result.output and "[bold]dog" in result.output and "schiff ü" in result.output
    report = json.loads((run / "eval.json").read_text())
    assert report["classes"] == sorted(NAMES) and report["num_images"] == 6

    out = tmp_path / "onnx"
    result = runner.invoke(app, ["export", "resnet10", "--weights", str(run / "model.safetensors"), "--onnx",
                                 "--dataset", str(root),
                                 "--exporter", "legacy", "--opset", "17", "--max-val-images", "6", "-o", str(out),
                                 "--json"])
    assert result.exit_code == 0, result.output
    assert any(c["inputs"] == "test images" and c["num_images"] == 6
               for r in json.loads(result.stdout) for c in r["comparisons"])
    png = next((root / "schiff ü").iterdir())
    result = runner.invoke(app, ["predict", str(png), "--onnx", str(out / "resnet10.onnx"), "--json"])
    assert result.exit_code == 0, result.output
    assert {t["label"] for t in json.loads(result.stdout)[0]["top"]} == set(NAMES)
    from aperture_zoo.cards import gather

    assert gather("resnet10", run).spec.label_names == tuple(sorted(NAMES))  # the card's classes
    from aperture_zoo.export.predict import OnnxClassifier

    entries = add_onnx_files(tmp_path / "web-models", [out / "resnet10.onnx"], taken=["resnet10"])
    assert entries[0].name == "resnet10-2" and entries[0].labels == sorted(NAMES)
    f = entries[0].files[0]  # what the page says beside each result: no temperature was known (no --val-split)
    assert f.precision == "fp32" and not f.tta and f.temperature is None and f.calibrated is False
    assert not OnnxClassifier(out / "resnet10.onnx").calibrated
    assert (tmp_path / "web-models" / entries[0].file).is_file() and entries[0].file.startswith("own/")

    # `aperture push` of the folder run: the Hub repo's config and card carry its 3 classes, its weights unchanged
    monkeypatch.setenv("HF_ENDPOINT", hub_server.url)
    monkeypatch.setenv("HF_TOKEN", "tok-alice")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    result = runner.invoke(app, ["push", "resnet10", "--repo-id", "zoo/own-images", "--weights", str(run / "model.safetensors")])
    assert result.exit_code == 0, result.output
    head = hub_server.repos["zoo/own-images"].history()[0]
    assert head.files["model.safetensors"] == (run / "model.safetensors").read_bytes()
    config = json.loads(head.files["config.json"])
    assert config["num_classes"] == 3 and config["label_names"] == sorted(NAMES)
    assert "schiff ü" in head.files["README.md"].decode()


def test_scratch_records_folder_stats_and_freeze_trains_the_head_only(tmp_path: Path, test_images) -> None:
    from aperture_zoo import load
    from aperture_zoo.model import create_model
    from aperture_zoo.train import TrainConfig, fit
    from aperture_zoo.train.recipes import FAST
    from aperture_zoo.weights import save_weights

    root = _folder(tmp_path / "imgs", test_images, per_class=10)
    tiny = create_model("resnet10", channels=(8, 8, 8, 8)).spec
    recipe = FAST.replace(epochs=1, batch_size=8)
    fit(TrainConfig(model=tiny, dataset=str(root), recipe=recipe, device="cpu", out_dir=tmp_path / "scratch",
                    progress=False))
    scratch = load("resnet10", weights=tmp_path / "scratch" / "model.safetensors")
    expected = load_dataset(str(root)).mean_std()
    assert (scratch.spec.mean, scratch.spec.std) == expected and scratch.spec.num_classes == 3

    torch.manual_seed(1)
    source = create_model(tiny.replace(num_classes=10))
    save_weights(source, tmp_path / "source.safetensors")
    fit(TrainConfig(model=tiny, dataset=str(root), init=str(tmp_path / "source.safetensors"), freeze_backbone=True,
                    recipe=recipe, device="cpu", out_dir=tmp_path / "probe", progress=False))
    probe = load("resnet10", weights=tmp_path / "probe" / "model.safetensors")
    before, after = source.state_dict(), probe.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in after if not k.startswith("fc."))  # BN stats too
    assert after["fc.weight"].shape == (3, 8)


@pytest.mark.parametrize("args, message", [
    (["--init", "resnet22.fast"], "holds resnet22 weights of another shape (blocks [3, 2, 3, 2] vs [1, 1, 1, 1], channels"),
    (["--init", "PICKLE"], "is a PyTorch pickle checkpoint"),
    (["--freeze-backbone"], "add --init"),
    (["--test-split", "1.5"], "--test-split must be a fraction"),
])
def test_bad_init_and_split_options_are_one_line(tmp_path: Path, test_images, args: list[str], message: str) -> None:
    root = _folder(tmp_path / "imgs", test_images, per_class=3)
    torch.save({"fc.weight": torch.zeros(1)}, tmp_path / "model.pt")
    args = [str(tmp_path / "model.pt") if a == "PICKLE" else a for a in args]
    result = CliRunner().invoke(app, ["train", "resnet10", "--dataset", str(root), *args, "--device", "cpu",
                                      "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and message in result.output, result.output
    assert "Traceback" not in result.output and not (tmp_path / "run" / "model.safetensors").exists()


@pytest.mark.parametrize("command", ["train", "eval"])
def test_an_empty_folder_is_one_line_on_the_command_line(tmp_path: Path, command: str) -> None:
    (tmp_path / "empty").mkdir()
    args = (["train", "resnet10", "--out", str(tmp_path / "run")] if command == "train" else
            ["eval", "resnet10", "--pretrained"])
    result = CliRunner().invoke(app, [*args, "--dataset", str(tmp_path / "empty"), "--device", "cpu"])
    assert result.exit_code == 2 and "has no class folders" in result.output, result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) <= 3


def test_features_with_num_classes_zero() -> None:
    from aperture_zoo import load

    model = load("resnet10", pretrained=True, num_classes=0)
    feats = model(torch.zeros(2, 3, 32, 32))
    assert feats.shape == (2, 512) and isinstance(model.fc, torch.nn.Identity)
    full = load("resnet10", pretrained=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(full.fc(model(x)), full(x), atol=1e-5)


def test_weights_for_other_classes_are_not_scored_on_this_data() -> None:
    """Same class count, other names (or order): an accuracy would be silently wrong, so it is refused."""
    from aperture_zoo.data import Split
    from aperture_zoo.model import create_model
    from aperture_zoo.train.evaluate import EvalError, evaluate

    model = create_model("resnet10", channels=(8, 8, 8, 8), num_classes=2).eval()
    model = create_model(model.spec.replace(class_names=("cat", "dog")))
    split = Split(np.zeros((2, 3, 32, 32), np.uint8), np.array([0, 1]), ("dog", "cat"))
    with pytest.raises(EvalError, match="class 0: 'cat' in the weights, 'dog' in the data"):
        evaluate(model, split)
    ok = evaluate(model, Split(split.images, split.labels, ("cat", "dog")))
    assert ok.classes == ("cat", "dog") and ok.num_images == 2
