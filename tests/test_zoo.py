"""`train_zoo` / `aperture train-zoo`: order, checks, summary, deadline pause and resume, recipe guard."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from aperture_zoo.cli import app
from aperture_zoo.registry import UnknownModelError
from aperture_zoo.train import apply_overrides, get_recipe
from aperture_zoo.train.zoo import ZooConfig, ZooError, summary_markdown, time_to_reach, train_zoo
from aperture_zoo.files import file_sha256

pytestmark = pytest.mark.usefixtures("one_thread")

# 100 stratified synthetic images, batch 50: real Table 1 models, about a second per epoch on CPU.
SETS = ["batch_size=50", "lr=0.05", "warmup_fraction=0.25", "cutout=0"]
RECIPE = apply_overrides(get_recipe("fast"), [*SETS, "epochs=2"])


def _cfg(data: Path, runs: Path, **kw) -> ZooConfig:
    base = dict(models=["resnet32", "resnet10"], runs_dir=runs, recipe=RECIPE, data_dir=data, download=False,
                device="cpu", subset=100, test_subset=100, progress=False)
    base.update(kw)
    return ZooConfig(**base)


@pytest.fixture(scope="module")
def zoo(synthetic_cifar: Path, tmp_path_factory: pytest.TempPathFactory):
    runs = tmp_path_factory.mktemp("zoo")
    return train_zoo(_cfg(synthetic_cifar, runs), say=lambda _m: None)


def test_trains_checks_and_summarises_in_the_order_given(zoo) -> None:
    assert zoo.complete
    rows = {r["model"]: r for r in zoo.rows}
    assert set(rows) == {"resnet10", "resnet32"}
    for name, row in rows.items():
        run = zoo.runs_dir / name
        metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        assert row["status"] == "done" and row["epochs"] == 2
        assert row["top1"] == pytest.approx(metrics[-1]["test_top1"], abs=1e-3)  # the final epoch's, not a best
        assert row["sha256"] == file_sha256(run / "model.safetensors")
        check = json.loads((run / "check.json").read_text())
        assert check["passed"] and check["images"] == 100
        assert check["reloaded_top1"] == pytest.approx(check["recorded_top1"], abs=0.1)
    doc = json.loads((zoo.runs_dir / "summary.json").read_text())
    assert [r["model"] for r in doc["models"]] == ["resnet10", "resnet32"]  # registry order in the summary
    table = (zoo.runs_dir / "summary.md").read_text()
    assert "| resnet10 | cifar10 (subset 100, test subset 100) | done | 2 |" in table and "final-epoch top-1" in table


def test_running_again_skips_finished_models(zoo, synthetic_cifar) -> None:
    before = {n: (zoo.runs_dir / n / "model.safetensors").stat().st_mtime_ns for n in ("resnet10", "resnet32")}
    said: list[str] = []
    again = train_zoo(_cfg(synthetic_cifar, zoo.runs_dir), say=said.append)
    assert again.complete and not any("training" in m for m in said)
    assert before == {n: (zoo.runs_dir / n / "model.safetensors").stat().st_mtime_ns for n in before}


def test_a_different_recipe_in_the_same_runs_dir_is_refused(zoo, synthetic_cifar) -> None:
    other = apply_overrides(get_recipe("fast"), [*SETS, "epochs=3"])
    with pytest.raises(ZooError, match=r"epochs 2 \(asked 3\).*another --runs-dir"):
        train_zoo(_cfg(synthetic_cifar, zoo.runs_dir, recipe=other), say=lambda _m: None)


def test_deadline_pauses_at_an_epoch_boundary_and_the_same_call_resumes(synthetic_cifar, tmp_path) -> None:
    runs = tmp_path / "runs"
    first = train_zoo(_cfg(synthetic_cifar, runs, deadline_s=1e-3), say=lambda _m: None)
    assert not first.complete
    rows = {r["model"]: r for r in first.rows}
    assert rows["resnet32"]["status"] == "paused" and rows["resnet32"]["epochs_done"] == 1
    assert rows["resnet10"]["status"] == "not started"  # the deadline stops the whole call
    assert "paused (1/2)" in (runs / "summary.md").read_text()
    second = train_zoo(_cfg(synthetic_cifar, runs), say=lambda _m: None)
    assert second.complete
    metrics = (runs / "resnet32" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in metrics] == [1, 2]


def test_bad_options_fail_before_any_training(synthetic_cifar, tmp_path) -> None:
    with pytest.raises(UnknownModelError, match="resnet22"):
        train_zoo(_cfg(synthetic_cifar, tmp_path, models=["resnet222"]))
    with pytest.raises(ZooError, match="more than once: resnet10"):
        train_zoo(_cfg(synthetic_cifar, tmp_path, models=["resnet10", "resnet10"]))
    with pytest.raises(ZooError, match="--deadline must be a positive"):
        train_zoo(_cfg(synthetic_cifar, tmp_path, deadline_s=-5))
    assert not any(tmp_path.iterdir())


def test_time_to_reach_counts_wall_time_until_the_first_epoch_at_the_target() -> None:
    rows = [{"epoch_seconds": 2.0, "test_top1": 90.0}, {"epoch_seconds": 3.0},
            {"epoch_seconds": 4.0, "test_top1": 94.2}, {"epoch_seconds": 1.0, "test_top1": 95.0}]
    assert time_to_reach(rows, 94.12) == 9.0
    assert time_to_reach(rows, 99.0) is None


def test_summary_markdown_marks_missing_figures() -> None:
    text = summary_markdown([{"model": "resnet22", "status": "not started"}])
    assert "| resnet22 | — | not started | — | — |" in text


def test_cli_pauses_with_exit_75_and_says_how_to_go_on(synthetic_cifar, tmp_path) -> None:
    runs = tmp_path / "runs"
    args = ["train-zoo", "resnet10", "--runs-dir", str(runs), "--data-dir", str(synthetic_cifar), "--no-download",
            "--device", "cpu", "--subset", "100", "--test-subset", "100", "--epochs", "2", "--no-export",
            "--no-progress", *[x for s in SETS for x in ("--set", s)]]
    paused = CliRunner().invoke(app, [*args, "--deadline", "0.001"])
    assert paused.exit_code == 75, paused.output
    assert "run again" in paused.output and "paused (1/2)" in paused.output
    done = CliRunner().invoke(app, args)
    assert done.exit_code == 0, done.output
    assert "| resnet10 | cifar10 (subset 100, test subset 100) | done | 2 |" in done.output
    bad = CliRunner().invoke(app, [*args, "--epochs", "3"])
    assert bad.exit_code == 2 and "another --runs-dir" in bad.output


def test_summary_lists_models_in_registry_order_whatever_order_they_were_asked_in(tmp_path) -> None:
    from aperture_zoo.train.zoo import write_summary

    for name in ("resnet32", "resnet10"):
        (tmp_path / name).mkdir()
    result = write_summary(tmp_path, ["resnet32", "resnet10", "resnet22"])
    assert [r["model"] for r in result.rows] == ["resnet10", "resnet22", "resnet32"]
    assert [r["status"] for r in result.rows] == ["not started"] * 3


def test_the_reload_check_refuses_a_record_the_weights_do_not_reproduce(synthetic_cifar, tmp_path) -> None:
    """A record 0.2 point off what the saved weights score on reload is an error; 0.05 off passes."""
    from hub_fixtures import random_weights

    from aperture_zoo.registry import get_spec
    from aperture_zoo.train.zoo import check_weights

    cfg = _cfg(synthetic_cifar, tmp_path)
    spec = get_spec("resnet10")
    (tmp_path / "run.json").write_text(json.dumps({"arch": spec.arch_dict(), "spec": json.loads(spec.to_json()),
                                                   "seed": 0, "subset": None, "test_subset": 50, "val_split": 0}))
    weights = tmp_path / "model.safetensors"

    def check(recorded: float) -> dict:
        random_weights(weights, "resnet10", init_seed=3, test_top1=recorded)
        (tmp_path / "check.json").unlink(missing_ok=True)
        try:
            check_weights("resnet10", tmp_path, cfg)
        except ZooError:
            pass
        return json.loads((tmp_path / "check.json").read_text())

    actual = check(-1.0)["reloaded_top1"]
    assert check(actual + 0.05)["passed"]
    with pytest.raises(ZooError, match="score .* on reload but"):
        random_weights(weights, "resnet10", init_seed=3, test_top1=actual + 0.2)
        check_weights("resnet10", tmp_path, cfg)
