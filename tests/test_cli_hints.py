"""The commands the CLI suggests after a training error name every option of the run, quoted for a shell."""

from __future__ import annotations

import shlex
from pathlib import Path

from aperture_zoo.cli.hints import resume_command, retry_command, train_hint
from aperture_zoo.model import create_model
from aperture_zoo.train import NothingToResume, TimeBudgetReached, TrainingDiverged, TrainingError
from aperture_zoo.train.recipes import FAST, apply_overrides
from aperture_zoo.train.settings import TrainConfig, resolve_run, with_run_options

TINY = create_model("resnet10", channels=(16, 32, 32, 64)).spec


def _record(tmp_path: Path) -> dict:
    cfg = TrainConfig(model=TINY, seed=5, subset=200, val_split=0.1, data_dir=tmp_path / "my data", download=False,
                      device="cpu")
    return resolve_run(with_run_options(cfg)).record


def test_the_retry_command_names_every_option_and_only_the_recipe_fields_that_differ(tmp_path: Path) -> None:
    recipe = apply_overrides(FAST, ["epochs=2", "batch_size=50", "cutout=0"])  # lr follows the batch size
    argv = shlex.split(retry_command(recipe, _record(tmp_path), out=tmp_path / "again", lr=recipe.lr / 2))
    assert argv[:3] == ["aperture", "train", "resnet10"]
    assert argv[argv.index("--arch") + 1] == "channels=16,32,32,64" and argv[argv.index("--recipe") + 1] == "fast"
    sets = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
    assert sorted(sets) == ["batch_size=50", "cutout=0", "epochs=2"]  # no lr=: --lr says it
    assert argv[argv.index("--lr") + 1] == f"{recipe.lr / 2:g}"
    for flag, value in (("--seed", "5"), ("--subset", "200"), ("--val-split", "0.1"), ("--device", "cpu"),
                        ("--data-dir", str((tmp_path / "my data").resolve())), ("--out", str(tmp_path / "again"))):
        assert argv[argv.index(flag) + 1] == value, flag
    assert "--no-download" in argv and "--compile" not in argv and "--test-subset" not in argv


def test_each_training_error_gets_its_own_hint(tmp_path: Path) -> None:
    run = tmp_path / "a run"
    assert train_hint(TimeBudgetReached("budget", run, 1)) == f". Continue with: {resume_command(run)}"
    assert shlex.split(resume_command(run)) == ["aperture", "train", "--resume", str(run)]
    diverged = train_hint(TrainingDiverged("nan", run, FAST, _record(tmp_path)))
    assert diverged.startswith(". Lower --lr: start again with half of it, `aperture train resnet10 ")
    assert "--out" not in diverged  # a fresh folder: the diverged one keeps its last good checkpoint
    again = train_hint(NothingToResume("nothing", run, FAST, _record(tmp_path)))
    assert again.startswith(": `aperture train resnet10") and shlex.split(again[3:-1])[-2:] == ["--out", str(run)]
    assert train_hint(TrainingError("--time-budget must be positive")) is None


def test_the_retry_command_of_a_folder_run_names_no_data_dir_and_runs_as_printed(tmp_path: Path,
                                                                                 monkeypatch) -> None:
    """Hostile try 7, L1: the command printed to start a folder run again carried the recorded --data-dir, which
    `aperture train` refuses for a folder run (exit 2, "drop --data-dir"); typed as printed, it must train."""
    from typer.testing import CliRunner

    from aperture_zoo.cli import app
    from aperture_zoo.train.dataset_run import new_run
    from test_data_report import write_folder

    monkeypatch.setenv("APERTURE_DATA", str(tmp_path / "cache"))
    root = write_folder(tmp_path / "my images", 4)
    run = resolve_run(with_run_options(TrainConfig(model=TINY, seed=3, device="cpu")))
    record = new_run(run.spec, run.record, str(root), None, None, False, None, False)[1]  # what run.json holds
    assert record["data_dir"]  # recorded for every run: the command must leave it out for a folder run
    recipe = apply_overrides(FAST, ["epochs=1", "batch_size=4"])
    printed = retry_command(recipe, record, out=tmp_path / "again")
    argv = shlex.split(printed)
    assert "--data-dir" not in argv and argv[argv.index("--dataset") + 1] == str(root.resolve()), printed
    assert "--data-dir" not in train_hint(TrainingDiverged("chance level", tmp_path / "r", recipe, record))
    result = CliRunner().invoke(app, [*argv[1:], "--no-progress"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "again" / "model.safetensors").is_file()
