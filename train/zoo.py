"""Train the whole zoo (or a chosen subset, in a chosen order) with one recipe, and summarise it.

Each model gets ``RUNS/<name>/``: a finished run (its ``model.safetensors`` exists) is skipped, a
checkpointed one resumes, a missing one starts. So the same command, run again after a kill or a
spent deadline, continues where it stopped; the summary is rebuilt from the run directories every
time, never from memory, and says for each model whether it is finished.

After training, each model is checked: its saved weights are loaded into a fresh model and
re-evaluated on the test split, which must reproduce the final-epoch accuracy recorded in them;
then, when the caller passes an ``exporter`` (the CLI passes ``aperture_zoo.export.export_run``), it
is exported to ONNX and validated against PyTorch. The exporter is a parameter so that training
never imports the export package (the two layer-4 packages stay independent).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aperture_zoo.errors import ApertureError
from aperture_zoo.files import (CHECK_FILENAME, CHECKPOINT_FILENAME, EXPORT_REPORT_FILENAME,
                                SUMMARY_JSON_FILENAME as SUMMARY_JSON, SUMMARY_MD_FILENAME as SUMMARY_MD, RUN_FILENAME,
                                WEIGHTS_FILENAME, atomic_write_text, read_json)
from aperture_zoo.registry import get_spec, list_models

from .loop import fit
from .recipes import FAST, Recipe
from .rundir import RunDir
from .seeds import check_seeds, mean_std
from .settings import TimeBudgetReached, TrainConfig

REPORT_BEST_TOP1 = 94.12  # the report's headline (Table 3: resnet22, best of 400 epochs on the test set)
CHECK_TOLERANCE = 0.1     # points of top-1 a reload may differ from the record (cuDNN algorithm choice)


class ZooError(ApertureError, ValueError):
    """A zoo run that cannot go on as asked; the message says what to change."""


@dataclass
class ZooConfig:
    """Options of ``train_zoo``; ``None`` for ``models`` means every registered model, in registry order."""

    models: Sequence[str] | None = None
    runs_dir: str | os.PathLike[str] = "runs/zoo"
    recipe: Recipe = FAST
    data_dir: str | os.PathLike[str] | None = None
    download: bool = True
    device: str = "auto"
    compile: bool = False
    subset: int | None = None
    test_subset: int | None = None
    seed: int = 0                       # the first seed; seed 0 trains in RUNS/<name>, seed K in RUNS/<name>-seedK
    seeds: int = 1                      # seeds per model: seed .. seed + seeds - 1
    time_budget_s: float | None = None  # per model and call
    deadline_s: float | None = None     # for the whole call: no model starts or continues after it
    progress: bool = True
    dataset: str | None = None          # cifar10 (default), cifar100 or an image folder


# (model name, its finished run directory) -> the export's record, written to the run's export report.
Exporter = Callable[[str, Path], dict[str, Any]]


@dataclass
class ZooResult:
    runs_dir: Path
    rows: list[dict[str, Any]] = field(default_factory=list)
    complete: bool = False  # every asked-for model finished


def _order(models: Sequence[str] | None) -> list[str]:
    names = list(models) if models else list_models()
    for name in names:
        get_spec(name)  # unknown names fail here with the registry's suggestion, before any training
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ZooError(f"model(s) given more than once: {', '.join(dupes)}")
    return names


def run_dir_for(runs: Path, name: str, seed: int) -> Path:
    """Where one seed of one model trains: ``RUNS/<name>`` for seed 0 (as before seeds), else ``RUNS/<name>-seed<K>``."""
    return runs / name if seed == 0 else runs / f"{name}-seed{seed}"


def _run_dirs(runs: Path, name: str, asked: Sequence[int] = ()) -> list[tuple[int, Path]]:
    """(seed, folder) of every run of ``name`` in ``runs`` and every asked seed, by seed."""
    found = {s: run_dir_for(runs, name, s) for s in asked}
    if (runs / name).is_dir():
        found[0] = runs / name
    if runs.is_dir():
        for path in runs.iterdir():
            m = re.fullmatch(re.escape(name) + r"-seed(\d+)", path.name)
            if m and path.is_dir():
                found[int(m.group(1))] = path
    return sorted(found.items())


def _check_same_request(run_dir: Path, tc: TrainConfig) -> None:
    """A folder counts as this request's run (done, or resumed) only when it is that run: ``request.py``'s rule."""
    from .checkpoint import OtherRun
    from .request import check_same_request

    if not any((run_dir / f).exists() for f in (CHECKPOINT_FILENAME, WEIGHTS_FILENAME)):
        return  # nothing trained there yet: a new run starts in it (``RunDir.check_new``)
    try:
        check_same_request(tc, run_dir)
    except OtherRun as exc:
        raise ZooError(f"{str(run_dir)!r} holds another run than the one asked: {exc.what}. Use another "
                       "--runs-dir, or run again with the options that run was started with") from None


def time_to_reach(rows: list[dict[str, Any]], top1: float) -> float | None:
    """Wall seconds (training + per-epoch evaluation) until the first epoch whose test top-1 >= ``top1``."""
    total = 0.0
    for row in rows:
        total += float(row.get("epoch_seconds", 0.0))
        if row.get("test_top1") is not None and row["test_top1"] >= top1:
            return total
    return None


def _status_row(name: str, run_dir: Path) -> dict[str, Any]:
    """What the run directory says about one model: finished (with its figures), paused, or not started."""
    from aperture_zoo.files import file_sha256
    from aperture_zoo.weights import decode_metadata, read_metadata

    spec = get_spec(name)
    row: dict[str, Any] = {"model": name, "params": spec.report_params, "report_top1_20ep": spec.report_top1_20ep,
                           "run_dir": str(run_dir)}
    metrics = RunDir(run_dir).metrics()
    row.update(_data_of(run_dir))
    weights = run_dir / WEIGHTS_FILENAME
    if weights.exists():
        meta = decode_metadata(read_metadata(weights))
        recipe = meta.get("recipe") or {}
        row.update(
            status="done", epochs=meta.get("epochs"), recipe=recipe.get("name"), top1=meta.get("test_top1"),
            top1_flip_tta=meta.get("test_top1_flip_tta"),
            wall_time_s=meta.get("wall_time_s"), images_per_s=meta.get("train_images_per_s"),
            device=meta.get("train_device"), torch=meta.get("torch_version"),
            seconds_to_report_best=time_to_reach(metrics, REPORT_BEST_TOP1), sha256=file_sha256(weights),
        )
    elif (run_dir / CHECKPOINT_FILENAME).exists():
        epochs = RunDir(run_dir).recipe().epochs
        row.update(status="paused", epochs_done=len(metrics), epochs=epochs)
    else:
        row.update(status="not started")
    for extra in (CHECK_FILENAME, EXPORT_REPORT_FILENAME):
        if (run_dir / extra).exists():
            row[extra.split(".")[0]] = read_json(run_dir / extra, "delete it to redo that step", ZooError)
    return row


def _data_of(run_dir: Path) -> dict[str, Any]:
    """What the run trained and tested on, as its run.json records it (a folder by its name, never its path)."""
    from aperture_zoo.datasets import public_dataset

    from .request import request_identity

    if not (run_dir / RUN_FILENAME).is_file():
        return {"dataset": None}
    run = RunDir(run_dir).record()
    return {"dataset": public_dataset(str(run.get("dataset", "cifar10"))), "subset": run.get("subset"),
            "test_subset": run.get("test_subset"), "request": request_identity(run_dir)}


def check_weights(name: str, run_dir: Path, cfg: ZooConfig) -> dict[str, Any]:
    """Reload the saved weights into a fresh model and re-evaluate: the record must be reproduced."""
    from aperture_zoo.data import load_split, subset
    from aperture_zoo.pretrained import load
    from aperture_zoo.weights import decode_metadata, read_metadata

    from .dataset_run import run_dataset
    from .distributed import resolve_device
    from .evaluate import evaluate

    weights = run_dir / WEIGHTS_FILENAME
    meta = decode_metadata(read_metadata(weights))
    run = RunDir(run_dir).record()
    own = run_dataset(run, cfg.data_dir)
    full = own.test if own is not None else load_split("test", cfg.data_dir)
    test = subset(full, run.get("test_subset"), int(run.get("seed", 0)))
    model = load(name, weights=weights)  # the file's own head and class names
    res = evaluate(model, test, device=resolve_device(cfg.device))
    recorded = float(meta["test_top1"])
    out = {"recorded_top1": recorded, "reloaded_top1": round(res.top1, 4), "images": res.num_images,
           "device": res.device, "passed": abs(res.top1 - recorded) <= CHECK_TOLERANCE}
    atomic_write_text(run_dir / CHECK_FILENAME, json.dumps(out, indent=2) + "\n")
    if not out["passed"]:
        raise ZooError(
            f"{name}: the saved weights score {res.top1:.2f}% on reload but {recorded:.2f}% was recorded; "
            f"the weights file in {str(run_dir)!r} does not hold the trained model"
        )
    return out


def train_zoo(cfg: ZooConfig, say: Callable[[str], None] = print, exporter: Exporter | None = None) -> ZooResult:
    """Train, check and (with ``exporter``) export each asked-for model in order; write ``summary.json`` / ``summary.md``."""
    names = _order(cfg.models)
    for limit, what in ((cfg.time_budget_s, "--time-budget"), (cfg.deadline_s, "--deadline")):
        if limit is not None and not limit > 0:
            raise ZooError(f"{what} must be a positive number of seconds, not {limit}")
    runs = Path(cfg.runs_dir)
    recipe = cfg.recipe.validate()
    check_seeds(cfg.seeds)
    if cfg.seed < 0:
        raise ZooError(f"--seed must be >= 0, got {cfg.seed}")
    seeds = list(range(cfg.seed, cfg.seed + cfg.seeds))
    jobs = [(name, s, run_dir_for(runs, name, s)) for name in names for s in seeds]
    for name, seed, run_dir in jobs:  # refuse a runs folder of other requests before training anything
        _check_same_request(run_dir, TrainConfig(model=name, recipe=recipe, seed=seed, subset=cfg.subset,
                                                 test_subset=cfg.test_subset, dataset=cfg.dataset))
    start = time.perf_counter()
    stopped = False
    for name, seed, run_dir in jobs:
        label = name if cfg.seeds == 1 and seed == 0 else f"{name} seed {seed}"
        left = None if cfg.deadline_s is None else cfg.deadline_s - (time.perf_counter() - start)
        if left is not None and left <= 0:
            say(f"{label}: deadline reached before it could start or continue; run again to go on")
            stopped = True
            break
        if not (run_dir / WEIGHTS_FILENAME).exists():
            budget = min(b for b in (cfg.time_budget_s, left) if b is not None) \
                if (cfg.time_budget_s, left) != (None, None) else None
            resuming = (run_dir / CHECKPOINT_FILENAME).exists()
            say(f"{label}: {'resuming' if resuming else 'training'} in {run_dir}")
            tc = TrainConfig(
                model=None if resuming else name, recipe=None if resuming else recipe,
                resume=run_dir if resuming else None, out_dir=None if resuming else run_dir,
                data_dir=cfg.data_dir, download=cfg.download, device=cfg.device, compile=cfg.compile,
                subset=None if resuming else cfg.subset, test_subset=None if resuming else cfg.test_subset,
                seed=None if resuming else seed,
                progress=cfg.progress, time_budget_s=budget, dataset=None if resuming else cfg.dataset,
            )
            try:
                result = fit(tc)
            except TimeBudgetReached as exc:
                say(f"{label}: paused after epoch {exc.epoch} (time budget); run again to resume")
                if cfg.deadline_s is not None and budget == left:
                    stopped = True
                    break
                continue
            say(f"{label}: final-epoch test top-1 {result.test_top1:.2f}% in {result.wall_time_s:.1f}s")
        if not (run_dir / CHECK_FILENAME).exists():
            chk = check_weights(name, run_dir, cfg)
            say(f"{label}: reloaded weights score {chk['reloaded_top1']:.2f}% (recorded {chk['recorded_top1']:.2f}%)")
        if exporter is not None and not (run_dir / EXPORT_REPORT_FILENAME).exists():
            exp = exporter(name, run_dir)
            atomic_write_text(run_dir / EXPORT_REPORT_FILENAME, json.dumps(exp, indent=2, default=str) + "\n")
            say(f"{label}: ONNX {', '.join(exp['files'])} {'validated' if exp['passed'] else 'FAILED validation'}")
    result = write_summary(runs, names, seeds)
    result.complete = not stopped and all(r["status"] == "done" for r in result.rows
                                          if r["model"] in names and r["seed"] in seeds)
    return result


def write_summary(runs: Path, names: Sequence[str] = (), seeds: Sequence[int] = (0,)) -> ZooResult:
    """``summary.json`` and ``summary.md`` from every run directory in ``runs`` (plus ``names`` x ``seeds``).

    One row per run (model and seed), and per model the mean ± sample std of the final-epoch top-1
    over its finished seeds (``seeds`` in summary.json).
    """
    import torch

    rows = []
    for n in list_models():
        for seed, run_dir in _run_dirs(runs, n, seeds if n in names else ()):
            rows.append({**_status_row(n, run_dir), "seed": seed})
    runs.mkdir(parents=True, exist_ok=True)
    stats = seed_stats(rows)
    doc = {"report_best_top1": REPORT_BEST_TOP1, "torch": torch.__version__,
           "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "models": rows, "seeds": stats}
    atomic_write_text(runs / SUMMARY_JSON, json.dumps(doc, indent=2) + "\n")
    atomic_write_text(runs / SUMMARY_MD, summary_markdown(rows) + seeds_markdown(stats))
    return ZooResult(runs_dir=runs, rows=rows)


def seed_stats(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per model and request: its finished seeds and the mean ± sample std (n - 1) of their final-epoch top-1.

    Runs of one model from other requests (another dataset, recipe, subset, ...: ``request.request_identity``)
    are never averaged together: each request gets its own entry, named by its dataset, recipe and identity.
    """
    out = []
    for name in dict.fromkeys(r["model"] for r in rows):
        done = [r for r in rows if r["model"] == name and r["status"] == "done"]
        groups = {r.get("request"): [d for d in done if d.get("request") == r.get("request")] for r in done} or {None: []}
        out += [_seed_entry(name, group, request, len(groups) > 1) for request, group in groups.items()]
    return out


def _seed_entry(name: str, done: list[dict[str, Any]], request: str | None, several: bool) -> dict[str, Any]:
    mean, std = mean_std([float(r["top1"]) for r in done])
    entry: dict[str, Any] = {"model": name, "request": request, "seeds": [r["seed"] for r in done], "n": len(done),
                             "top1_mean": mean, "top1_std": std}
    if several:  # the table names which request each mean is of
        first = done[0]
        entry["label"] = f"{name} ({_data_cell(first)}, {first.get('recipe')} {first.get('epochs')} ep, request {request})"
    tta = [float(r["top1_flip_tta"]) for r in done if r.get("top1_flip_tta") is not None]
    if tta:
        entry["top1_flip_tta_mean"], entry["top1_flip_tta_std"] = mean_std(tta)
        entry["n_flip_tta"] = len(tta)
    return entry


def seeds_markdown(stats: list[dict[str, Any]]) -> str:
    """Mean ± std per model (the std needs two finished seeds), under the per-run table."""
    def cell(mean: float | None, std: float | None) -> str:
        return "—" if mean is None else f"{mean:.2f}" + ("" if std is None else f" ± {std:.2f}")

    lines = ["", "Final-epoch test top-1 over seeds (mean ± sample std; flip TTA declared apart):", "",
             "| model | seeds done | final-epoch top-1 % | with flip TTA % |", "|---|---|---|---|"]
    for e in stats:
        seeds = ", ".join(map(str, e["seeds"])) or "none"
        lines.append(f"| {e.get('label', e['model'])} | {e['n']} ({seeds}) | {cell(e['top1_mean'], e['top1_std'])} "
                     f"| {cell(e.get('top1_flip_tta_mean'), e.get('top1_flip_tta_std'))} |")
    return "\n".join(lines) + "\n"


def summary_markdown(rows: list[dict[str, Any]]) -> str:
    """The summary as a Markdown table: final-epoch figures only, with the report's Table 1 beside them."""
    def num(v: Any, fmt: str) -> str:
        return "—" if v is None else format(v, fmt)

    lines = [
        f"| model | dataset | status | epochs | final-epoch top-1 % | report Table 1 % (20 ep., CIFAR-10) | wall s "
        f"| train img/s | s to {REPORT_BEST_TOP1} % | device | seed | flip-TTA top-1 % |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        status = r["status"] if r["status"] != "paused" else f"paused ({r['epochs_done']}/{r['epochs']})"
        lines.append(
            f"| {r['model']} | {_data_cell(r)} | {status} | {num(r.get('epochs'), 'd')} | {num(r.get('top1'), '.2f')} "
            f"| {num(r.get('report_top1_20ep'), '.2f')} | {num(r.get('wall_time_s'), '.1f')} "
            f"| {num(r.get('images_per_s'), ',.0f')} | {num(r.get('seconds_to_report_best'), '.1f')} "
            f"| {r.get('device') or '—'} | {r.get('seed', 0)} | {num(r.get('top1_flip_tta'), '.2f')} |"
        )
    return "\n".join(lines) + "\n"


def _data_cell(row: dict[str, Any]) -> str:
    from aperture_zoo.card_text import escape_md  # a folder's name is outside text

    if not row.get("dataset"):
        return "—"
    subsets = [f"{k.replace('_', ' ')} {row[k]}" for k in ("subset", "test_subset") if row.get(k) is not None]
    return escape_md(str(row["dataset"])) + (f" ({', '.join(subsets)})" if subsets else "")


__all__ = ["Exporter", "ZooConfig", "ZooError", "ZooResult", "run_dir_for", "seed_stats", "summary_markdown",
           "time_to_reach", "train_zoo", "write_summary"]
