"""Folder datasets by content: the decode cache, the manifest, the data report and resuming over a changed folder.

Small synthetic folders (the CIFAR look-alike's colour-and-stripe images as 32x32 PNG or BMP files),
decoded through the real image rule.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from aperture_zoo.cli import app
from aperture_zoo.datareport import DataReportError, folder_report
from aperture_zoo.datasets import load_dataset
from aperture_zoo.folder import FolderError, load_folder, scan_folder
from aperture_zoo.manifest import Manifest, ManifestError
from cifar_synth import CLASSES, make_images
from profiles import examples

TINY = ["--arch", "channels=8,8,8,8"]

pytestmark = pytest.mark.usefixtures("one_thread")  # the same kernels each run; 2 shared cores


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APERTURE_DATA", str(tmp_path / "data-cache"))
    monkeypatch.setenv("APERTURE_WEIGHTS_DIR", str(Path(__file__).resolve().parent.parent / "model_cards"))


def write_folder(root: Path, per_class: int, classes: int = 3, seed: int = 0, ext: str = "png",
                 start: int = 0) -> Path:
    """``root/<class>/<n>.<ext>``: the look-alike's images (learnable: a colour and a stripe per class)."""
    from PIL import Image

    x, y = make_images(per_class, seed)
    for c in range(classes):
        folder = root / CLASSES[c]
        folder.mkdir(parents=True, exist_ok=True)
        for k, i in enumerate(np.flatnonzero(y == c)):
            Image.fromarray(x[i].transpose(1, 2, 0)).save(folder / f"{start + k:04d}.{ext}")
    return root


# --------------------------------------------------------------------------- the decode cache, by content


def test_a_look_alike_folder_in_the_same_place_gets_its_own_pixels(tmp_path: Path) -> None:
    """Same path, names, sizes and modification times, other pixels: the cache must not answer."""
    a = write_folder(tmp_path / "a", 4, ext="bmp", seed=1)
    b = write_folder(tmp_path / "b", 4, ext="bmp", seed=2)
    for fa in sorted(a.rglob("*.bmp")):  # BMPs of one size have one length: only the bytes differ
        fb = b / fa.relative_to(a)
        assert fa.stat().st_size == fb.stat().st_size
        os.utime(fb, ns=(fa.stat().st_atime_ns, fa.stat().st_mtime_ns))
    place = tmp_path / "photos"
    a.rename(place)
    first = load_folder(place)
    place.rename(tmp_path / "a-away")
    b.rename(place)
    second = load_folder(place)
    assert not second.from_cache and not np.array_equal(first.images, second.images)
    assert second.scan.manifest().sha256 != first.scan.manifest().sha256
    assert load_folder(place).from_cache  # unchanged content: the cache answers


def test_a_file_written_between_hashing_and_decoding_never_reaches_the_cache(tmp_path: Path) -> None:
    """Regression (fifth hostile try, F1): a file replaced after the scan hashed it and put back later was decoded
    from the new bytes and cached under the old bytes' key: every later run got the wrong pixels. Each file is now
    read once, and the bytes decoded are the bytes hashed."""
    root = write_folder(tmp_path / "d", 4, ext="bmp", seed=1)
    victim = root / "bird" / "0001.bmp"
    original = victim.read_bytes()
    white = write_folder(tmp_path / "w", 4, ext="bmp", seed=2) / "bird" / "0001.bmp"

    def swap(_: str) -> None:  # called between the hashing and the decoding
        victim.write_bytes(white.read_bytes())

    with pytest.raises(FolderError, match="1 file in .* changed while being read .*'bird/0001.bmp'.*nothing was cached"):
        load_folder(root, say=swap)
    assert not list((tmp_path / "data-cache").rglob("*.npz"))
    for vanish in (victim.unlink, lambda: (victim.unlink(), os.mkfifo(victim))):  # round 6, N1: gone, or a FIFO
        victim.write_bytes(original)
        with pytest.raises(FolderError, match="changed while being read"):
            load_folder(root, say=lambda _: vanish())
        assert not list((tmp_path / "data-cache").rglob("*.npz"))
        victim.unlink(missing_ok=True)
    victim.write_bytes(original)  # put back: the content hashed before
    first = load_folder(root)
    assert not first.from_cache
    fresh = load_folder(root, cache_dir=tmp_path / "fresh")
    assert np.array_equal(first.images, fresh.images) and load_folder(root).from_cache


def test_each_distinct_content_is_decoded_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import aperture_zoo.folder as folder

    root = write_folder(tmp_path / "d", 3)
    shutil.copy(root / "bird" / "0000.png", root / "bird" / "copy.png")
    seen: list[int] = []
    real = folder.decode_files
    monkeypatch.setattr(folder, "decode_files", lambda paths, *a: seen.append(len(paths)) or real(paths, *a))
    decoded = load_folder(root)
    assert seen == [9] and len(decoded.images) == 10  # 10 files, 9 contents


# --------------------------------------------------------------------------- the manifest


def test_the_manifest_names_what_changed(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "d", 3)
    before = scan_manifest(root)
    write_folder(root, 3, seed=5, start=100, classes=1)  # 3 new files under airplane/
    (root / "bird" / "0001.png").write_bytes((root / "bird" / "0002.png").read_bytes())
    (root / "automobile" / "0000.png").unlink()
    text = scan_manifest(root).changes_from(before)
    assert text == ("3 files added under airplane/, 1 file removed under automobile/, 1 changed: bird/0001.png")
    assert Manifest.from_record(json.loads(json.dumps(before.to_record()))) == before


def test_many_changed_files_are_counted_and_the_first_three_named(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "d", 6, classes=2)  # airplane/0000..0005.png, automobile/...
    before = scan_manifest(root)
    files = sorted((root / "airplane").iterdir())
    for i, path in enumerate(files[:5]):  # five files get another file's bytes
        path.write_bytes(files[(i + 1) % 6].read_bytes() if i < 4 else files[0].read_bytes() + b"\0")
    assert scan_manifest(root).changes_from(before) == (
        "5 changed: airplane/0000.png, airplane/0001.png, airplane/0002.png and 2 more")


def test_a_damaged_recorded_manifest_is_refused_naming_where_and_the_fix(tmp_path: Path) -> None:
    record = scan_manifest(write_folder(tmp_path / "d", 2)).to_record()
    record["files"][0][2] = "0" * 64  # an entry edited by hand: the record's own SHA-256 no longer fits
    with pytest.raises(ManifestError) as info:
        Manifest.from_record(json.loads(json.dumps(record)), "run.json of run-7")
    assert str(info.value) == ("the dataset manifest recorded by run.json of run-7 is damaged (its entries do not "
                               "give its SHA-256); start a new run")


def scan_manifest(root: Path) -> Manifest:
    return load_folder(root).scan.manifest()


@settings(max_examples=examples(60), deadline=None)  # derandomised by the ci profile; make fuzz explores
@given(record=st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
                               st.sampled_from(["format", "sha256", "files", "x"]), inner, max_size=4), max_leaves=12))
def test_a_recorded_manifest_is_read_back_or_refused_in_one_line(record) -> None:
    try:
        Manifest.from_record(record)
    except ManifestError as exc:
        assert "damaged" in str(exc) and "\n" not in str(exc)


# --------------------------------------------------------------------------- the data report


def test_the_report_names_ignored_unreadable_and_duplicate_files(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "d", 4)
    (root / ".DS_Store").write_bytes(b"\0\0")
    (root / "notes.txt").write_text("hello")
    (root / "bird" / "readme.md").write_text("x")
    (root / "__MACOSX").mkdir()
    (root / "bird" / "empty.png").write_bytes(b"")
    shutil.copy(root / "bird" / "0000.png", root / "bird" / "again.png")
    report = folder_report(root)
    (root / "airplane" / "fake.png").write_bytes(b"not a png")  # round 6, L5: named by its path
    report = folder_report(root)
    reason = dict(report.unreadable)["airplane/fake.png"]  # the path is cut at 120 characters: not asserted here
    assert reason.startswith("not a decodable image") and "BytesIO" not in reason and "<_io" not in reason
    (root / "airplane" / "fake.png").unlink()
    report = folder_report(root)
    ignored = dict(report.ignored)
    assert ignored[".DS_Store"].startswith("hidden") and ignored["__MACOSX"].startswith("hidden")
    assert ignored["notes.txt"] == "not in a class folder" and ignored["bird/readme.md"].startswith("not an image (.md")
    assert dict(report.unreadable)["bird/empty.png"].startswith("empty file")
    assert report.duplicates == [("bird/0000.png", ["bird/again.png"])]
    assert report.classes == {"airplane": {"images": 4}, "automobile": {"images": 4}, "bird": {"images": 4}}
    text = "\n".join(report.lines())
    assert "ignored 3 files and 1 folder:" in text and "1 exact copy" in text and "bird/empty.png: empty file" in text
    ds = load_dataset(str(root), test_split=0.5)
    assert len(ds.train) + len(ds.test) == 12  # the copy is used once


def test_images_through_links_out_of_the_folder_are_used_and_named(tmp_path: Path) -> None:
    """Regression (fourth hostile try, low): symlinks out of the dataset were followed without a word; they are
    still followed (datasets assembled from links are common) and the report names each such image."""
    root = write_folder(tmp_path / "d", 4)
    elsewhere = write_folder(tmp_path / "elsewhere", 2, seed=3)
    (root / "bird" / "far.png").symlink_to(elsewhere / "bird" / "0000.png")
    (root / "bird" / "near.png").symlink_to(root / "bird" / "0001.png")  # inside (a copy, dropped): not named
    (root / "automobile" / "more").symlink_to(elsewhere / "automobile", target_is_directory=True)
    report = folder_report(root)
    outside = dict(report.linked_outside)
    assert set(outside) == {"bird/far.png", "automobile/more/0000.png", "automobile/more/0001.png"}
    assert outside["bird/far.png"] == str((elsewhere / "bird" / "0000.png").resolve())
    assert report.classes["automobile"] == {"images": 6}
    assert "3 images read through symlinks that lead outside the folder (used as part of it)" in "\n".join(report.lines())
    assert report.to_dict()["linked_outside_count"] == 3
    plain = folder_report(write_folder(tmp_path / "plain", 2))
    assert plain.linked_outside == [] and "symlinks" not in "\n".join(plain.lines())


def test_copies_in_two_classes_are_refused_naming_them(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "d", 3)
    shutil.copy(root / "bird" / "0001.png", root / "airplane" / "x.png")
    with pytest.raises(DataReportError, match=r"filed under two different classes .*'airplane/x.png' = 'bird/0001.png'"):
        load_dataset(str(root))
    result = CliRunner().invoke(app, ["train", "resnet10", *TINY, "--dataset", str(root), "--device", "cpu",
                                      "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "airplane/x.png" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run" / "checkpoint.safetensors").exists()


def test_a_copy_in_train_and_test_is_kept_in_train_only(tmp_path: Path) -> None:
    write_folder(tmp_path / "d" / "train", 3)
    write_folder(tmp_path / "d" / "test", 2, seed=9, classes=2)
    shutil.copy(tmp_path / "d" / "train" / "bird" / "0000.png", tmp_path / "d" / "test" / "bird.png")
    (tmp_path / "d" / "test" / "bird").mkdir(exist_ok=True)
    shutil.move(tmp_path / "d" / "test" / "bird.png", tmp_path / "d" / "test" / "bird" / "0000.png")
    ds = load_dataset(str(tmp_path / "d"))
    assert ds.report.duplicates == [("train/bird/0000.png", ["test/bird/0000.png"])]
    assert len(ds.train) == 9 and len(ds.test) == 4 and "test/bird/0000.png" not in ds.files[1]
    assert any("'bird' has no images in test/" in n for n in ds.report.notes)  # said, not silent


@pytest.mark.parametrize("make, message", [
    (lambda r: (r / "bird").mkdir(), r"lack at least 2 readable images .*'bird' \(0\)"),
    (lambda r: write_folder(r, 1, classes=3, seed=3, start=50) and [p.unlink() for p in (r / "bird").glob("000*")],
     r"'bird' \(1\)"),
])
def test_classes_a_split_cannot_use_are_refused(tmp_path: Path, make, message: str) -> None:
    root = write_folder(tmp_path / "d", 3, classes=2)
    make(root)
    with pytest.raises(DataReportError, match=message):
        load_dataset(str(root))


def test_a_parent_of_datasets_is_refused_naming_them(tmp_path: Path) -> None:
    write_folder(tmp_path / "many" / "digits", 2)
    write_folder(tmp_path / "many" / "shapes", 2, seed=4)
    with pytest.raises(FolderError, match=r"looks like a folder of datasets.*'digits', 'shapes' hold only class-like"):
        scan_folder(tmp_path / "many")
    write_folder(tmp_path / "split" / "one" / "train", 2)
    write_folder(tmp_path / "split" / "one" / "test", 2, seed=1)
    write_folder(tmp_path / "split" / "two", 2, seed=2)
    result = CliRunner().invoke(app, ["data-report", str(tmp_path / "split")])
    assert result.exit_code == 2 and "'one' hold their own train/ and test/" in result.output, result.output
    nested = write_folder(tmp_path / "nested" / "cat", 2)  # one class with sub-folders, one without: a dataset
    write_folder(tmp_path / "nested" / "dog", 2, seed=5, classes=1)
    (tmp_path / "nested" / "dog" / "airplane" / "0000.png").rename(tmp_path / "nested" / "dog" / "x.png")
    assert scan_folder(nested.parent).classes == ("cat", "dog")


def test_the_data_report_command_prints_and_records(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "d", 3)
    (root / "bird" / "\x1b[31mred.txt").write_text("x")
    result = CliRunner().invoke(app, ["data-report", str(root)])
    assert result.exit_code == 0 and "3 classes, 9 images" in result.output and "airplane 3" in result.output
    assert "\x1b" not in result.output and "\\x1b[31mred.txt" in result.output
    as_json = json.loads(CliRunner().invoke(app, ["data-report", str(root), "--json"]).stdout)
    assert as_json["manifest_sha256"] == load_folder(root).scan.manifest().sha256 and as_json["ignored_count"] == 1


# --------------------------------------------------------------------------- a run records its data; resume checks it


def _train(tmp_path: Path, root: Path, *extra: str) -> object:
    return CliRunner().invoke(app, ["train", "resnet10", *TINY, "--dataset", str(root), "--device", "cpu",
                                    "--no-progress", "--set", "epochs=2", *extra])


def test_a_cifar_run_records_its_batch_files_and_resume_refuses_other_ones(tmp_path: Path) -> None:
    """Regression (third hostile try, F10): CIFAR-10 batches replaced under a stopped run were trained on at resume."""
    from cifar_synth import write_cifar10

    data, other, run = write_cifar10(tmp_path / "c", 4, 2, seed=0), write_cifar10(tmp_path / "o", 4, 2, seed=1), tmp_path / "r"
    first = CliRunner().invoke(app, ["train", "resnet10", *TINY, "--data-dir", str(data), "--no-download", "--device",
                                     "cpu", "--no-progress", "--set", "epochs=2", "--set", "batch_size=8",
                                     "--out", str(run), "--time-budget", "0.001"])
    assert first.exit_code == 75, first.output
    recorded = json.loads((run / "run.json").read_text())["data_files"]
    assert sorted(recorded) == sorted([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"])
    batches = data / "cifar-10-batches-py"
    original = (batches / "data_batch_3").read_bytes()
    shutil.copyfile(other / "cifar-10-batches-py" / "data_batch_3", batches / "data_batch_3")
    again = CliRunner().invoke(app, ["train", "--resume", str(run), "--no-progress"])
    assert again.exit_code == 2, again.output
    assert "are not the ones the run started on (1 changed: data_batch_3)" in " ".join(again.output.split())
    assert [json.loads(r)["epoch"] for r in (run / "metrics.jsonl").read_text().splitlines()] == [1]
    (batches / "data_batch_3").write_bytes(original)
    moved = CliRunner().invoke(app, ["train", "--resume", str(run), "--no-progress", "--data-dir", str(other)])
    assert moved.exit_code == 2 and "are not the ones the run started on (6 changed:" in " ".join(moved.output.split())
    done = CliRunner().invoke(app, ["train", "--resume", str(run), "--no-progress"])
    assert done.exit_code == 0, done.output


def test_a_moved_folder_resumes_with_dataset_when_its_content_is_the_same(tmp_path: Path) -> None:
    """Regression (third hostile try, F2): after the folder moved, resume said to pass a folder, then refused --dataset."""
    root = write_folder(tmp_path / "d", 12)
    run = tmp_path / "run"
    assert _train(tmp_path, root, "--out", str(run), "--time-budget", "0.001").exit_code == 75
    moved = root.rename(tmp_path / "moved")
    gone = CliRunner().invoke(app, ["train", "--resume", str(run), "--no-progress"])
    assert gone.exit_code == 2 and "is gone (moved or deleted); if it moved, resume with --dataset NEW_DIR" in \
        " ".join(gone.output.split()), gone.output
    (moved / "bird" / "0003.png").write_bytes((moved / "bird" / "0004.png").read_bytes())  # not the same content
    changed = CliRunner().invoke(app, ["train", "--resume", str(run), "--dataset", str(moved), "--no-progress"])
    assert changed.exit_code == 2 and "1 changed: bird/0003.png" in " ".join(changed.output.split()), changed.output
    shutil.rmtree(moved)
    write_folder(tmp_path / "again", 12)  # the same content (same seed), at another path
    done = CliRunner().invoke(app, ["train", "--resume", str(run), "--dataset", str(tmp_path / "again"), "--no-progress"])
    assert done.exit_code == 0, done.output
    record = json.loads((run / "run.json").read_text())
    assert record["dataset"] == str((tmp_path / "again").resolve()) or record["dataset"].endswith("again")
    assert record["dataset_moves"][-1]["to"] == record["dataset"]


@pytest.mark.parametrize("swap", ["checkpoint.safetensors", "run.json"])
def test_resume_refuses_a_checkpoint_or_run_json_of_another_run(tmp_path: Path, swap: str) -> None:
    """Regression (fourth hostile try, N1/N2): another run's checkpoint copied in resumed with exit 0 (a card then
    named a seed that does not reproduce the weights); one with another head size was a size-mismatch traceback."""
    root = write_folder(tmp_path / "d", 12)
    a, b = tmp_path / "a", tmp_path / "b"
    assert _train(tmp_path, root, "--out", str(a), "--time-budget", "0.001").exit_code == 75
    assert _train(tmp_path, root, "--out", str(b), "--time-budget", "0.001", "--seed", "1").exit_code == 75
    shutil.copyfile(b / swap, a / swap)
    again = CliRunner().invoke(app, ["train", "--resume", str(a), "--no-progress"])
    assert again.exit_code == 2 and "Traceback" not in again.output, again.output
    assert "its checkpoint.safetensors was written by another run than the one its run.json and recipe.json " \
        "describe (run id" in " ".join(again.output.split()), again.output


def test_resume_refuses_a_recipe_json_of_another_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression (fourth hostile try, low): another run's recipe.json alone copied in resumed this run's
    checkpoint under the other recipe (exit 0); the checkpoint now records the recipe it was trained with.
    A lower --lr is the one change: a resume with it killed before its first checkpoint (recipe.json and
    run.json's lr_changes say the new lr, the checkpoint the old one) resumes again, with that lr or without."""
    from aperture_zoo.train import loop

    root = write_folder(tmp_path / "d", 12)
    a, b = tmp_path / "a", tmp_path / "b"
    assert _train(tmp_path, root, "--out", str(a), "--time-budget", "0.001").exit_code == 75
    assert _train(tmp_path, root, "--out", str(b), "--time-budget", "0.001", "--set", "epochs=3",
                  "--set", "label_smoothing=0.0").exit_code == 75
    own = (a / "recipe.json").read_bytes()
    shutil.copyfile(b / "recipe.json", a / "recipe.json")
    again = CliRunner().invoke(app, ["train", "--resume", str(a), "--no-progress"])
    text = " ".join(again.output.split())
    assert again.exit_code == 2 and "describe (recipe)" in text, text
    (a / "recipe.json").write_bytes(own)

    class Killed(Exception):
        pass

    def killed(*args: object) -> None:
        raise Killed

    with monkeypatch.context() as m:
        m.setattr(loop, "train_epoch", killed)  # kill -9 in the first epoch: no checkpoint of the new lr
        for _ in range(2):  # the lower lr, then the same lr again
            again = CliRunner().invoke(app, ["train", "--resume", str(a), "--no-progress", "--lr", "0.001"])
            assert isinstance(again.exception, Killed), again.output
    assert [c["lr"] for c in json.loads((a / "run.json").read_text())["lr_changes"]] == [0.001]
    done = CliRunner().invoke(app, ["train", "--resume", str(a), "--no-progress"])
    assert done.exit_code == 0, done.output  # a lower lr stays the one change a resume may make
    assert json.loads((a / "recipe.json").read_text())["lr"] == 0.001


def test_resume_refuses_an_option_that_changes_the_run_and_takes_the_recorded_value(tmp_path: Path) -> None:
    """Regression (fifth hostile try, F2): --resume with --init, --freeze-backbone, --test-split or --arch exited 0
    and silently continued the run as it was (a resume "with the backbone frozen" trained every layer); --data-dir
    on a folder run was ignored without a word (sixth try)."""
    root = write_folder(tmp_path / "d", 12)
    a, b = tmp_path / "a", tmp_path / "b"
    assert _train(tmp_path, root, "--out", str(a), "--time-budget", "0.001").exit_code == 75
    stopped = (a / "checkpoint.safetensors").read_bytes()
    for option, used in ((["--init", str(root / "bird" / "0000.png")], "no --init (it trains from scratch)"),
                         (["--freeze-backbone"], "no --freeze-backbone (it trains every layer)"),
                         (["--test-split", "0.5"], "--test-split 0.2"),
                         (["--arch", "channels=16,16,16,16"], "--arch channels=8,8,8,8"),
                         (["resnet10", "--arch", "num_classes=5"], "--arch num_classes=3")):
        refused = CliRunner().invoke(app, ["train", "--resume", str(a), "--no-progress", *option])
        text, asked = " ".join(refused.output.split()), " ".join(o for o in option if o != "resnet10")
        assert refused.exit_code == 2 and f"cannot resume {str(a)!r} with {asked}: the run used {used}. Drop the " \
            "option to continue it, or start a new run" in text, text
    for given in (["--resume", str(a)], ["resnet10", "--dataset", str(root), "--out", str(tmp_path / "c")]):
        ignored = CliRunner().invoke(app, ["train", *given, "--no-progress", "--data-dir", str(tmp_path / "nowhere")])
        assert ignored.exit_code == 2 and "--data-dir (data_dir) is where CIFAR-10/100 are read from, but this run " \
            f"trains on the image folder {str(root.resolve())!r}" in " ".join(ignored.output.split()), ignored.output
    assert (a / "checkpoint.safetensors").read_bytes() == stopped  # nothing trained
    same = ["--test-split", "0.2", "--arch", "channels=8,8,8,8", "--arch", "num_classes=3"]
    assert CliRunner().invoke(app, ["train", "--resume", str(a), "--no-progress", *same]).exit_code == 0
    init = a / "model.safetensors"
    tuned = ["--init", str(init), "--freeze-backbone"]
    assert _train(tmp_path, root, "--out", str(b), "--time-budget", "0.001", *tuned).exit_code == 75
    other = CliRunner().invoke(app, ["train", "--resume", str(b), "--no-progress", "--init",
                                     str(a / "checkpoint.safetensors")])  # other bytes than the run started from
    assert other.exit_code == 2 and f"the run used --init {init} (SHA-256 " in " ".join(other.output.split())
    done = CliRunner().invoke(app, ["train", "--resume", str(b), "--no-progress", *tuned])
    assert done.exit_code == 0, done.output
    assert json.loads((b / "run.json").read_text())["freeze_backbone"] is True


def test_resuming_a_complete_run_draws_its_missing_curves_and_card_names_them(tmp_path: Path) -> None:
    """Regression (fifth hostile try, F7): a kill -9 between model.safetensors and curves.png left a run that
    --resume called complete without drawing them, and `card --run` shipped without them, without a word."""
    from aperture_zoo.files import file_sha256
    from aperture_zoo.provenance import check_figure

    root, a = write_folder(tmp_path / "d", 12), tmp_path / "a"
    assert _train(tmp_path, root, "--out", str(a)).exit_code == 0
    weights = (a / "model.safetensors").read_bytes()
    (a / "curves.png").unlink()  # where a kill -9 right after the weights leaves the run
    card = CliRunner().invoke(app, ["card", "resnet10", "--run", str(a), "--out", str(tmp_path / "c1")])
    text = " ".join(card.output.split())
    assert card.exit_code == 0 and "has no curves.png" in text and f"aperture train --resume {a}" in text, text
    again = CliRunner().invoke(app, ["train", "--resume", str(a), "--no-progress"])
    text = " ".join(again.output.split())
    assert again.exit_code == 0 and "already complete (nothing trained; drew the missing curves.png from " \
        "metrics.jsonl)" in text, text
    check_figure(a / "curves.png", file_sha256(a / "model.safetensors"))  # drawn for these weights, not others
    assert (a / "model.safetensors").read_bytes() == weights
    card = CliRunner().invoke(app, ["card", "resnet10", "--run", str(a), "--out", str(tmp_path / "c2")])
    assert card.exit_code == 0 and "curves.png" not in card.output and (tmp_path / "c2" / "curves.png").is_file()
    again = CliRunner().invoke(app, ["train", "--resume", str(a), "--no-progress"])
    assert again.exit_code == 0 and "already complete (nothing trained or written)" in " ".join(again.output.split())


def test_init_from_a_narrower_network_of_the_same_name_advises_arch(tmp_path: Path) -> None:
    """Regression (fourth hostile try, N4): the advice repeated the command just run; it now names the --arch that fits."""
    root = write_folder(tmp_path / "d", 12)
    assert _train(tmp_path, root, "--out", str(tmp_path / "a")).exit_code == 0
    init = str(tmp_path / "a" / "model.safetensors")
    base = ["train", "resnet10", "--dataset", str(root), "--device", "cpu", "--no-progress", "--set", "epochs=1"]
    refused = CliRunner().invoke(app, [*base, "--init", init, "--out", str(tmp_path / "b")])
    text = " ".join(refused.output.split())
    assert refused.exit_code == 2 and f"aperture train resnet10 --arch channels=8,8,8,8 --init {init}" in text, text
    done = CliRunner().invoke(app, [*base, "--arch", "channels=8,8,8,8", "--init", init, "--out", str(tmp_path / "c")])
    assert done.exit_code == 0, done.output


def test_convert_takes_a_fine_tunes_head_and_a_derived_shape(tmp_path: Path) -> None:
    """Regression (fourth hostile try, N3): a 2-class or narrower checkpoint could not be converted, and the
    error named no fix."""
    import torch

    import aperture_zoo
    from aperture_zoo.model import create_model

    torch.save(create_model("resnet10", num_classes=2, channels=(8, 8, 8, 8)).state_dict(), tmp_path / "ft.pth")
    refused = CliRunner().invoke(app, ["convert", str(tmp_path / "ft.pth"), str(tmp_path / "a.safetensors"), "--model",
                                       "resnet10"])
    text = " ".join(refused.output.split())
    assert refused.exit_code == 2 and "add --num-classes 2" in text and "--arch" in text, text
    done = CliRunner().invoke(app, ["convert", str(tmp_path / "ft.pth"), str(tmp_path / "b.safetensors"), "--model",
                                    "resnet10", "--num-classes", "2", "--arch", "channels=8,8,8,8"])
    assert done.exit_code == 0, done.output
    model = aperture_zoo.load(str(tmp_path / "b.safetensors"))
    assert model.spec.num_classes == 2 and tuple(model.spec.channels) == (8, 8, 8, 8)


def test_a_run_records_its_manifest_and_split_and_resume_refuses_a_changed_folder(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "d", 90)  # 270 images: 216 to train, of which 22 validate by default
    run = tmp_path / "run"
    first = _train(tmp_path, root, "--out", str(run), "--time-budget", "0.001")
    assert first.exit_code == 75, first.output  # paused after epoch 1, checkpointed
    assert "data: " in first.output and "3 classes, 270 images" in first.output and "holding out 10%" in first.output
    data = json.loads((run / "run.json").read_text())["data"]
    split, files = data["split"], [f[0] for f in data["manifest"]["files"]]
    assert sorted(split["train"] + split["val"] + split["test"]) == sorted(files)  # a partition of the folder
    assert len(split["val"]) == 21 and len(split["test"]) == 54 and data["report"]["classes"]["bird"] == {"images": 90}
    assert data["manifest"]["sha256"] == data["manifest_sha256"] == Manifest.from_record(data["manifest"]).sha256
    # images added and one edited in place: resume names what changed, and trains nothing
    write_folder(root, 2, classes=1, seed=7, start=500)
    victim = root / "bird" / "0003.png"
    original = victim.read_bytes()
    victim.write_bytes((root / "bird" / "0004.png").read_bytes())
    again = CliRunner().invoke(app, ["train", "--resume", str(run), "--no-progress"])
    assert again.exit_code == 2, again.output
    assert ("changed since the run started (2 files added under airplane/, 1 changed: bird/0003.png); resume on "
            "the original folder, or start a new run") in " ".join(again.output.split())
    assert [json.loads(r)["epoch"] for r in (run / "metrics.jsonl").read_text().splitlines()] == [1]
    # restored: it resumes, and its weights carry the temperature fitted on the validation split
    for p in root.rglob("05*.png"):
        p.unlink()
    victim.write_bytes(original)
    done = CliRunner().invoke(app, ["train", "--resume", str(run), "--no-progress"])
    assert done.exit_code == 0, done.output
    from aperture_zoo.weights import decode_metadata, read_metadata

    meta = decode_metadata(read_metadata(run / "model.safetensors"))
    assert meta["temperature_fitted_on"] == "validation split" and meta["temperature"] > 0 and meta["val_split"] == 0.1
    assert meta["data"]["manifest_sha256"] == data["manifest_sha256"]
    assert "split" not in meta["data"] and "manifest" not in meta["data"]  # file lists stay in run.json



def test_published_files_carry_no_path_of_the_training_machine(tmp_path: Path) -> None:
    """Regression (fourth hostile try, low): the weights (and so a card or Hub folder) recorded the absolute path of
    the training folder and of the --init file; they now name the folder (``folder:NAME``) and the file only."""
    from aperture_zoo.weights import read_metadata

    root = write_folder(tmp_path / "private" / "cifar10", 12)  # a folder called like a built-in dataset
    run = tmp_path / "run"
    assert _train(tmp_path, root, "--out", str(run)).exit_code == 0
    ft = tmp_path / "ft"
    assert _train(tmp_path, root, "--out", str(ft), "--init", str(run / "model.safetensors")).exit_code == 0
    card = CliRunner().invoke(app, ["card", "resnet10", "--run", str(ft), "--out", str(tmp_path / "card")])
    assert card.exit_code == 0, card.output
    meta = read_metadata(ft / "model.safetensors")
    assert meta["dataset"] == "folder:cifar10" and json.loads(meta["data"])["dataset"] == "folder:cifar10"
    assert json.loads(meta["init"])["ref"] == "model.safetensors" and "path" not in json.loads(meta["init"])
    for f in [ft / "model.safetensors", *(tmp_path / "card").iterdir()]:
        assert str(tmp_path).encode() not in f.read_bytes(), f
    readme = (tmp_path / "card" / "README.md").read_text()
    assert "cifar10 image folder" in readme  # the folder, not the built-in set
    assert "Accuracy is measured on that folder's held-out test images" in readme  # round 6, N7
    assert "CIFAR-10 only" not in readme and "CIFAR-10 test set" not in readme
    assert "count of —" not in readme and "counts resnet10 with its own widths and a 10-class head" in readme  # N6
    refused = CliRunner().invoke(app, ["eval", str(ft / "model.safetensors")])
    assert refused.exit_code == 2 and "pass that folder with --dataset DIR" in " ".join(refused.output.split())


def test_eval_refuses_to_split_a_folder_for_weights_that_record_no_manifest(tmp_path: Path) -> None:
    """Round 6, N4: weights naming a folder dataset but no data record (edited, or another tool's) were evaluated on
    a fresh split of the folder: its "test" images could be ones they trained on, with exit 0."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    root = write_folder(tmp_path / "d", 12)
    run = tmp_path / "run"
    assert _train(tmp_path, root, "--out", str(run)).exit_code == 0
    with safe_open(run / "model.safetensors", "pt") as f:
        meta, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    meta.pop("data")
    save_file(tensors, tmp_path / "nodata.safetensors", metadata=meta)
    refused = CliRunner().invoke(app, ["eval", str(tmp_path / "nodata.safetensors"), "--dataset", str(root),
                                       "--out", str(tmp_path / "ev")])
    text = " ".join(refused.output.split())
    assert refused.exit_code == 2 and "record no content manifest of the folder they were trained on" in text, text


def test_a_dataset_name_with_bidi_characters_is_shown_escaped_in_the_card_front_matter(tmp_path: Path) -> None:
    """Round 6, L4: weights metadata (anyone's text) put a raw U+202E into the card's YAML front matter."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    root = write_folder(tmp_path / "d", 12)
    run = tmp_path / "run"
    assert _train(tmp_path, root, "--out", str(run), "--set", "epochs=1").exit_code == 0
    with safe_open(run / "model.safetensors", "pt") as f:
        meta, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    meta["dataset"] = "folder:evil\u202egnp.exe"
    (tmp_path / "w").mkdir()
    save_file(tensors, tmp_path / "w" / "model.safetensors", metadata=meta)
    made = CliRunner().invoke(app, ["card", "resnet10", "--weights", str(tmp_path / "w" / "model.safetensors"),
                                    "--out", str(tmp_path / "card")])
    assert made.exit_code == 0, made.output
    readme = (tmp_path / "card" / "README.md").read_text()
    assert "\u202e" not in readme and "evil\\u202egnp.exe image folder" in readme


def test_a_card_ships_only_the_log_its_weights_were_trained_with(tmp_path: Path) -> None:
    """Seventh hostile try, M2: a log was trusted when its last test top-1 matched the weights' figure, and on a small
    test set two runs end at one figure: another run's metrics.jsonl went into the card folder and the Hub."""
    root, a, b = write_folder(tmp_path / "d", 12), tmp_path / "a", tmp_path / "b"
    assert _train(tmp_path, root, "--out", str(a)).exit_code == 0
    assert _train(tmp_path, root, "--out", str(b), "--seed", "1").exit_code == 0
    own = CliRunner().invoke(app, ["card", "resnet10", "--run", str(a), "--out", str(tmp_path / "c1")])
    assert own.exit_code == 0, own.output
    assert (tmp_path / "c1" / "metrics.jsonl").read_bytes() == (a / "metrics.jsonl").read_bytes()
    rows = [json.loads(line) for line in (b / "metrics.jsonl").read_text().splitlines()]
    last_a = json.loads((a / "metrics.jsonl").read_text().splitlines()[-1])
    rows[-1]["test_top1"] = last_a["test_top1"]  # b's log, ending at a's figure: the tie the hostile try found
    (a / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    mixed = CliRunner().invoke(app, ["card", "resnet10", "--run", str(a), "--out", str(tmp_path / "c2")])
    text = " ".join(mixed.output.split())
    assert mixed.exit_code == 2 and "metrics.jsonl differs from the log these weights were trained with" in text, text
    assert not (tmp_path / "c2").exists()
    # hostile try 8, C1: the message names the fix that works (removing the log writes the card without it)
    assert "it was changed, or is another run's log); put back the run's own log, or remove it" in text, text
    (a / "metrics.jsonl").unlink()
    bare = CliRunner().invoke(app, ["card", "resnet10", "--run", str(a), "--out", str(tmp_path / "c2")])
    assert bare.exit_code == 0 and not (tmp_path / "c2" / "metrics.jsonl").exists(), bare.output
