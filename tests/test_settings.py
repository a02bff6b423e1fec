"""A run's settings: options a resume leaves out come from the run, and a resume is checked against it."""

from __future__ import annotations

import json

import pytest

from aperture_zoo.model import create_model
from aperture_zoo.train import NothingToResume, TrainConfig
from aperture_zoo.train.checkpoint import CheckpointError
from aperture_zoo.train.recipes import FAST, RecipeError
from aperture_zoo.train.rundir import RunDir
from aperture_zoo.train.settings import data_root, resolve_run, with_run_options

TINY = create_model("resnet10", channels=(8, 16, 16, 32)).spec


def test_saved_options_fill_in_what_resume_leaves_out_and_given_ones_win(tmp_path) -> None:
    from aperture_zoo.registry import get_spec

    spec = get_spec("resnet10")
    base = {"spec": json.loads(spec.to_json()), "arch": spec.arch_dict(), "seed": 0, "subset": None,
            "test_subset": None, "val_split": 0}  # the model and data fields every run records
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({**base, "data_dir": "/data/cifar", "download": False,
                                              "device": "cuda", "compile": True}))
    got = with_run_options(TrainConfig(resume=run))
    assert (str(got.data_dir), got.download, got.device, got.compile) == ("/data/cifar", False, "cuda", True)
    moved = with_run_options(TrainConfig(resume=run, data_dir=tmp_path / "new", device="cpu"))
    assert (moved.data_dir, moved.device, moved.compile) == (tmp_path / "new", "cpu", True)
    (run / "run.json").write_text(json.dumps(base))  # a run from before options were recorded
    old = with_run_options(TrainConfig(resume=run))
    assert (old.data_dir, old.download, old.device, old.compile) == (None, True, "auto", False)
    fresh = with_run_options(TrainConfig(model="resnet10"))
    assert (fresh.download, fresh.device, fresh.compile) == (True, "auto", False)


def test_a_new_run_records_its_model_seed_and_how_it_runs(tmp_path) -> None:
    run = resolve_run(with_run_options(TrainConfig(model=TINY, seed=4, subset=100, data_dir=tmp_path)))
    assert (run.spec, run.recipe, run.seed, run.resume_dir, run.ckpt) == (TINY, FAST, 4, None, None)
    assert run.record["arch"] == TINY.arch_dict() and run.record["subset"] == 100
    assert (run.record["data_dir"], run.record["download"], run.record["device"]) == (data_root(tmp_path), True, "auto")


def _pre_checkpoint_run(folder: RunDir) -> None:
    """What a run folder holds when it was stopped before its first checkpoint."""
    new = resolve_run(with_run_options(TrainConfig(model=TINY, seed=2)))
    folder.start(FAST, new.record)


def test_resuming_a_run_without_a_checkpoint_carries_what_is_needed_to_start_it_again(tmp_path) -> None:
    folder = RunDir(tmp_path)
    _pre_checkpoint_run(folder)
    with pytest.raises(NothingToResume, match="stopped before its first checkpoint") as info:
        resolve_run(with_run_options(TrainConfig(resume=tmp_path, device="cpu")))
    assert info.value.run_dir == tmp_path and info.value.recipe == FAST
    assert info.value.record["seed"] == 2 and info.value.record["device"] == "cpu"  # given values win


def test_a_resume_that_asks_for_another_model_recipe_or_seed_is_refused(tmp_path) -> None:
    folder = RunDir(tmp_path)
    _pre_checkpoint_run(folder)
    folder.checkpoint.write_bytes(b"")  # checked before the checkpoint is read
    for asked, error, message in ((dict(model="resnet22"), CheckpointError,
                                   r"it trains resnet10 \[1, 1, 1, 1\]/\[8, 16, 16, 32\], not resnet22 .*Resume without a "
                                   "model name, or start a new run$"),
                                  (dict(recipe=FAST.replace(lr=0.8)), RecipeError, "different recipe"),
                                  (dict(seed=3), CheckpointError, "seed=3: the run used seed=2"),
                                  (dict(dataset="cifar100"), CheckpointError, "--dataset cifar100: the run trains on cifar10"),
                                  # fifth hostile try, F2: these were dropped without a word
                                  (dict(test_split=0.5), CheckpointError, "--test-split 0.5: the run used its data"),
                                  (dict(init="resnet10.fast"), CheckpointError, "--init resnet10.fast: the run used no"),
                                  (dict(freeze_backbone=True), CheckpointError, "--freeze-backbone: the run used no"),
                                  (dict(model=TINY.replace(num_classes=5)), CheckpointError,
                                   "--arch num_classes=5: the run used --arch num_classes=10. Drop the option"),
                                  (dict(model=TINY.replace(num_classes=5, channels=(8, 8, 8, 8))), CheckpointError,
                                   "with --arch channels=8,8,8,8,num_classes=5: the run used --arch "
                                   "channels=8,16,16,32,num_classes=10. Drop the option")):
        with pytest.raises(error, match=message):
            resolve_run(with_run_options(TrainConfig(resume=tmp_path, **asked)))
    with pytest.raises(CheckpointError, match="unreadable"):  # its own dataset passes, on to the (empty) checkpoint
        resolve_run(with_run_options(TrainConfig(resume=tmp_path, dataset="CIFAR10")))


def test_a_cifar100_run_resumes_with_its_own_dataset_and_refuses_cifar10(tmp_path) -> None:
    folder = RunDir(tmp_path)
    new = resolve_run(with_run_options(TrainConfig(model=TINY, seed=2)))
    folder.start(FAST, {**new.record, "dataset": "cifar100"})  # what a --dataset cifar100 run records
    folder.checkpoint.write_bytes(b"")  # checked before the checkpoint is read
    with pytest.raises(CheckpointError, match="--dataset cifar10: the run trains on cifar100. Drop --dataset"):
        resolve_run(with_run_options(TrainConfig(resume=tmp_path, dataset="cifar10")))
    with pytest.raises(CheckpointError, match="unreadable"):  # its own dataset passes, on to the (empty) checkpoint
        resolve_run(with_run_options(TrainConfig(resume=tmp_path, dataset="CIFAR100")))


@pytest.mark.parametrize("source", ["folder", "cifar10"])
def test_a_model_input_size_the_training_images_do_not_have_is_refused_before_anything_is_written(
        tmp_path, source: str) -> None:
    """Hostile try 7, L9: --arch input_size=3,64,64 created the run folder, then failed at the first batch with advice
    for the Python API. Every source yields 3 x 32 x 32 images (folders decoded at 32x32, CIFAR as stored)."""
    from typer.testing import CliRunner

    from aperture_zoo.cli import app
    from aperture_zoo.train import TrainingError
    from test_data_report import write_folder

    with pytest.raises(TrainingError, match="drop input_size from --arch"):
        resolve_run(with_run_options(TrainConfig(model=TINY.replace(input_size=(3, 64, 64)))))
    data = (["--dataset", str(write_folder(tmp_path / "d", 2))] if source == "folder"
            else ["--data-dir", str(tmp_path / "no-cifar"), "--no-download"])  # refused before data is looked for
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", "resnet10", "--arch", "channels=8,8,8,8", "--arch",
                                      "input_size=3,64,64", "--set", "epochs=1", "--device", "cpu", "--no-progress",
                                      *data, "--out", str(run)], env={"APERTURE_DATA": str(tmp_path / "cache")})
    line = " ".join(result.output.split())
    assert result.exit_code == 2 and line.startswith("error: --arch input_size=3,64,64: training reads 3 x 32 x 32"), line
    assert not run.exists() and not (tmp_path / "cache").exists()


def test_a_new_run_without_a_model_says_how_to_name_one() -> None:
    from aperture_zoo.train import TrainingError

    with pytest.raises(TrainingError) as info:
        resolve_run(with_run_options(TrainConfig()))
    assert str(info.value) == "no model given; pass a name such as resnet22 (see `aperture list`)"


def test_a_run_started_from_a_published_tag_resumes_with_that_tag_and_refuses_another(tmp_path) -> None:
    """--init by tag goes by the tag's pinned SHA-256, like a file by its bytes."""
    from aperture_zoo.catalog import get_weights

    folder = RunDir(tmp_path)
    new = resolve_run(with_run_options(TrainConfig(model=TINY, seed=2)))
    pin = get_weights("resnet10.fast").sha256
    folder.start(FAST, {**new.record, "init": {"ref": "resnet10.fast", "sha256": pin}})
    folder.checkpoint.write_bytes(b"")  # checked before the checkpoint is read
    with pytest.raises(CheckpointError, match="unreadable"):  # the same start passes, on to the (empty) checkpoint
        resolve_run(with_run_options(TrainConfig(resume=tmp_path, init="resnet10.fast")))
    with pytest.raises(CheckpointError, match=rf"with --init resnet20.fast: the run used --init resnet10.fast "
                                              rf"\(SHA-256 {pin[:12]}\)\. Drop the option"):
        resolve_run(with_run_options(TrainConfig(resume=tmp_path, init="resnet20.fast")))
