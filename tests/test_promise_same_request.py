"""A run folder found by its name counts as a request's run only when it is that run.

``train-zoo`` run again into the same ``--runs-dir`` and ``train --seeds N --out DIR`` run again after a
kill find their runs by folder name (``RUNS/<model>``, ``DIR/seed<K>``). The promise: a folder is
counted as done, or continued, only when its recorded dataset (a folder by its content), subset,
test subset, seed and recipe are the request's; anything else is refused in one line naming what
differs. And a killed ``--seeds`` command, run again (or ``--resume DIR``), ends where an
uninterrupted one does: the same weights, bit for bit, and the mean ± std of every seed.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from aperture_zoo.errors import ApertureError
from aperture_zoo.train import apply_overrides, fit, get_recipe
from aperture_zoo.train.seeds import fit_seeds
from aperture_zoo.train.settings import TimeBudgetReached, TrainConfig, TrainingError
from aperture_zoo.train.zoo import ZooConfig, ZooError, train_zoo
from cifar_synth import make_images, write_png_folder

pytestmark = pytest.mark.usefixtures("one_thread")

RECIPE = apply_overrides(get_recipe("fast"), ["batch_size=8", "epochs=1", "cutout=0"])


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APERTURE_DATA", str(tmp_path / "data-cache"))


def _folder(root: Path, classes: list[str], seed: int = 0) -> Path:
    x, y = make_images(8, seed)
    return write_png_folder(root, x, y, classes, 8)


def _zoo(runs: Path, dataset: object, **kw) -> ZooConfig:
    return ZooConfig(models=["resnet10"], runs_dir=runs, recipe=RECIPE, device="cpu", progress=False,
                     dataset=None if dataset is None else str(dataset), **kw)


def test_train_zoo_counts_a_run_only_for_its_own_dataset_subset_and_recipe(tmp_path: Path) -> None:
    ds1 = _folder(tmp_path / "ds1", ["cat", "dog"])
    runs = tmp_path / "runs"
    first = train_zoo(_zoo(runs, ds1), say=lambda _m: None)
    assert first.complete
    said: list[str] = []
    again = train_zoo(_zoo(runs, ds1), say=said.append)  # the same request: done, nothing trained
    assert again.complete and not any("training" in m for m in said)
    moved = tmp_path / "moved"
    shutil.copytree(ds1, moved)  # the same content at another path is the same dataset
    assert train_zoo(_zoo(runs, moved), say=lambda _m: None).complete
    ds3 = _folder(tmp_path / "ds3", ["a", "b", "c"])
    for dataset, kw, what in (
        (ds3, {}, rf"--dataset {ds1} \(asked {ds3}, whose content differs: .*added under a/"),
        (None, {}, rf"--dataset {ds1} \(asked cifar10\)"),
        ("cifar100", {}, rf"--dataset {ds1} \(asked cifar100\)"),
        (ds1, {"subset": 10}, r"no --subset \(asked --subset 10\)"),
        (ds1, {"test_subset": 4}, r"no --test-subset \(asked --test-subset 4\)"),
        (ds1, {"recipe": RECIPE.replace(lr=RECIPE.lr / 2)}, r"another recipe: lr"),
    ):
        with pytest.raises(ZooError, match=f"'{runs / 'resnet10'}' holds another run than the one asked: {what}"
                           r".*Use another --runs-dir, or run again with the options"):
            train_zoo(dataclasses.replace(_zoo(runs, dataset), **kw), say=lambda _m: None)
    (ds1 / "cat" / "0000.png").write_bytes((ds1 / "dog" / "0000.png").read_bytes())  # edited in place
    with pytest.raises(ZooError, match=r"whose content differs: 1 changed: cat/0000.png"):
        train_zoo(_zoo(runs, ds1), say=lambda _m: None)
    with pytest.raises(ApertureError, match="dataset folder '.*no-such' does not exist"):  # as `train` says it
        train_zoo(_zoo(runs, tmp_path / "no-such"), say=lambda _m: None)
    doc = json.loads((runs / "summary.json").read_text())
    assert [(r["model"], r["dataset"], r["subset"]) for r in doc["models"]] == [("resnet10", "folder:ds1", None)]
    assert "| resnet10 | folder:ds1 | done |" in (runs / "summary.md").read_text()


def _seeds_cfg(ds: Path, out: Path, **kw) -> TrainConfig:
    return TrainConfig(model="resnet10", recipe=RECIPE.replace(epochs=2), dataset=str(ds), device="cpu",
                       out_dir=out, progress=False, **kw)


def _arch(cfg: TrainConfig) -> TrainConfig:
    from aperture_zoo.model import create_model

    return dataclasses.replace(cfg, model=create_model("resnet10", channels=(8, 8, 8, 8)).spec)


def test_a_killed_seeds_command_run_again_ends_as_an_uninterrupted_one(tmp_path: Path) -> None:
    ds = _folder(tmp_path / "ds", ["cat", "dog"])
    whole = fit_seeds(_arch(_seeds_cfg(ds, tmp_path / "whole")), 2, fit)

    def killed_in_seed1(cfg: TrainConfig):  # seed1 stops after its first epoch's checkpoint, as a kill would
        return fit(dataclasses.replace(cfg, time_budget_s=1e-3) if cfg.seed == 1 else cfg)

    out = tmp_path / "sk"
    with pytest.raises(TimeBudgetReached):
        fit_seeds(_arch(_seeds_cfg(ds, out)), 2, killed_in_seed1)
    seed0 = (out / "seed0" / "model.safetensors").read_bytes()
    for other, what in ((dict(subset=10), r"no --subset \(asked --subset 10\)"),
                        (dict(dataset=str(tmp_path / "no-such")), "does not exist")):
        with pytest.raises(ApertureError, match=what):
            fit_seeds(dataclasses.replace(_arch(_seeds_cfg(ds, out)), **other), 2, fit)
    with pytest.raises(TrainingError, match=r"'.*seed0' holds another run than this seed's: --arch channels=8,8,8,8 "
                       r"\(asked --arch channels=64,128,256,512\)\. Use another --out"):
        fit_seeds(_seeds_cfg(ds, out), 2, fit)
    again = fit_seeds(_arch(_seeds_cfg(ds, out)), 2, fit)  # the same command: seed0 kept, seed1 resumed
    assert again[0].already_complete and (out / "seed0" / "model.safetensors").read_bytes() == seed0
    assert not again[1].already_complete
    for s, (w, a) in enumerate(zip(whole, again)):
        ours, theirs = load_file(str(a.run_dir / "model.safetensors")), load_file(str(w.run_dir / "model.safetensors"))
        assert ours.keys() == theirs.keys() and all(np.array_equal(ours[k], theirs[k]) for k in ours), f"seed{s}"
        assert a.test_top1 == w.test_top1
    parent = fit_seeds(TrainConfig(resume=out, progress=False), 1, fit)  # --resume of the parent: every seed
    assert [r.run_dir for r in parent] == [out / "seed0", out / "seed1"] and all(r.already_complete for r in parent)


def test_resume_of_a_seeds_parent_prints_every_seed_and_the_mean(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from aperture_zoo.cli import app

    ds = _folder(tmp_path / "ds", ["cat", "dog"])
    args = ["train", "resnet10", "--arch", "channels=8,8,8,8", "--epochs", "1", "-b", "8", "--device", "cpu",
            "--dataset", str(ds), "--seeds", "2", "--out", str(tmp_path / "sd"), "--no-progress"]
    assert CliRunner().invoke(app, args).exit_code == 0
    res = CliRunner().invoke(app, ["train", "--resume", str(tmp_path / "sd"), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "seed 0: " in res.output and "seed 1: " in res.output and "(n=2) %" in res.output


def _tiny(ds: Path, out: Path | None, **kw) -> TrainConfig:
    return _arch(TrainConfig(model="resnet10", recipe=RECIPE, dataset=str(ds), device="cpu", out_dir=out,
                             progress=False, **kw))


def test_an_option_left_out_of_a_request_means_its_default(tmp_path: Path) -> None:
    from aperture_zoo.train.checkpoint import OtherRun
    from aperture_zoo.train.request import check_same_request

    ds = _folder(tmp_path / "ds", ["cat", "dog"])
    base = fit(_tiny(ds, tmp_path / "base"))
    split = fit(_tiny(ds, tmp_path / "split", test_split=0.5, val_split=0))
    tuned = fit(_tiny(ds, tmp_path / "tuned", init=str(base.run_dir), freeze_backbone=True))
    check_same_request(_tiny(ds, None, seed=0, test_split=0.5, val_split=0), split.run_dir)  # the same request
    check_same_request(_tiny(ds, None, seed=0, init=str(base.run_dir), freeze_backbone=True), tuned.run_dir)
    for cfg, folder, what in (
        (_tiny(ds, None, seed=0, val_split=0), split.run_dir, r"--test-split 0.5 \(asked no --test-split"),
        (_tiny(ds, None, seed=0, test_split=0.5), split.run_dir, r"--val-split 0 \(asked no --val-split\)"),
        (_tiny(ds, None, seed=0, init=str(base.run_dir)), tuned.run_dir, r"--freeze-backbone .*\(asked no --freeze"),
        (_tiny(ds, None, seed=0), tuned.run_dir, r"--init .*base.* \(asked no --init"),  # --recipe given, --init not
    ):
        with pytest.raises(OtherRun) as exc:
            check_same_request(cfg, folder)
        assert re.search(what, exc.value.what or ""), exc.value.what
    # the --seeds rerun that would have kept seed 0 of the other request and trained seed 1 with the defaults
    shutil.copytree(split.run_dir, tmp_path / "st" / "seed0")
    with pytest.raises(TrainingError, match=r"'.*seed0' holds another run than this seed's: --val-split 0 \(asked no"):
        fit_seeds(_tiny(ds, tmp_path / "st"), 2, fit)


class _Killed(Exception):
    pass


def test_resume_of_a_seeds_parent_trains_its_own_request_and_only_it(tmp_path: Path) -> None:
    ds, ds3 = _folder(tmp_path / "ds", ["cat", "dog"]), _folder(tmp_path / "ds3", ["a", "b", "c"])
    out = tmp_path / "sm"

    def killed_before_seed1(cfg: TrainConfig):  # a kill after seed 0, before seed1/ exists
        if cfg.seed == 1:
            raise _Killed
        return fit(cfg)

    with pytest.raises(_Killed):
        fit_seeds(_tiny(ds, out), 2, killed_before_seed1)
    assert not (out / "seed1").exists() and json.loads((out / "seeds.json").read_text())["seeds"] == [0, 1]
    done = fit_seeds(TrainConfig(resume=out, progress=False), 1, fit)  # the parent records N: seed 1 trains
    assert [r.run_dir for r in done] == [out / "seed0", out / "seed1"] and not done[1].already_complete
    with pytest.raises(TrainingError, match=rf"'{out}' holds the seeds of another --seeds command \(seeds.json\): "
                       rf"dataset {tmp_path / 'ds'} \(asked {ds3}, whose content differs\)"):
        fit_seeds(_tiny(ds3, out, seed=5), 2, fit)  # another request into the same --out
    fit(_tiny(ds3, out / "seed5", seed=5))  # a seed folder of another request put there
    with pytest.raises(TrainingError, match=rf"'{out / 'seed5'}' holds another run than this seed's: --dataset"):
        fit_seeds(TrainConfig(resume=out, progress=False), 1, fit)
    shutil.rmtree(out / "seed5")
    (out / "seeds.json").unlink()  # a parent written before the record existed
    with pytest.raises(TrainingError, match=rf"'{out}' has no seeds.json .* resume them one by one .*seed0, .*seed1"):
        fit_seeds(TrainConfig(resume=out, progress=False), 1, fit)


def test_train_zoo_averages_seeds_of_one_request_only(tmp_path: Path) -> None:
    ds1, ds3 = _folder(tmp_path / "ds1", ["cat", "dog"]), _folder(tmp_path / "ds3", ["a", "b", "c"])
    runs = tmp_path / "runs"
    train_zoo(_zoo(runs, ds1), say=lambda _m: None)
    train_zoo(_zoo(runs, ds3, seed=1), say=lambda _m: None)  # another dataset, another seed, same --runs-dir
    doc = json.loads((runs / "summary.json").read_text())
    assert [(e["model"], e["seeds"], e["n"]) for e in doc["seeds"]] == [("resnet10", [0], 1), ("resnet10", [1], 1)]
    assert len({e["request"] for e in doc["seeds"]}) == 2
    md = (runs / "summary.md").read_text()
    assert "| resnet10 (folder:ds1, " in md and "| resnet10 (folder:ds3, " in md and "(n=2)" not in md
