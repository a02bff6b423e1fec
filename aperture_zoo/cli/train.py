"""`aperture train` and `aperture eval`: thin wrappers over ``aperture_zoo.train``."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from . import app
from aperture_zoo.terminal import fragment

from .common import (MODEL_HELP, WEIGHTS_HELP, console, err_console, model_for_command, names_weights, print_json, safe,
                     user_errors, with_hint)


_DATASET_HELP = ("cifar10 (default), cifar100 (the official python archive, fine labels) or a folder "
                 "DIR/<class>/<image> (DIR/train + DIR/test or DIR/val used as given).")


def _is_main_rank() -> bool:
    return os.environ.get("RANK", "0") == "0"


@app.command("train")
def train_cmd(
    name: Optional[str] = typer.Argument(None, help="Model name (see `aperture list`); optional with --resume."),
    recipe: Optional[str] = typer.Option(None, "--recipe", "-r", help="fast (default), long, sprint, paper, table1 "
                                         "or finetune (the default with --init)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Override the recipe's epochs."),
    batch_size: Optional[int] = typer.Option(
        None, "--batch-size", "-b", help="Global batch size. The lr scales linearly with it (fast: 0.4 per 512, "
        "so 0.05 at 64) unless --lr is given; recipe.json records both."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate (wins over the batch-size scaling)."),
    weight_decay: Optional[float] = typer.Option(None, "--weight-decay", "--wd"),
    label_smoothing: Optional[float] = typer.Option(None, "--label-smoothing"),
    mixup: Optional[float] = typer.Option(None, "--mixup", help="Mixup alpha (0 = off)."),
    cutout: Optional[int] = typer.Option(None, "--cutout", help="Cutout square side in pixels (0 = off)."),
    ema: Optional[float] = typer.Option(None, "--ema", help="EMA decay of the weights (0 = off)."),
    set_: list[str] = typer.Option([], "--set", help="Any recipe field: --set warmup_fraction=0.1 (repeatable); "
                                   "--set batch_size=N scales the lr like --batch-size."),
    arch: list[str] = typer.Option([], "--arch", help="Derive the model, e.g. --arch blocks=2,2,2,2 (or channels=...)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of init, order and augmentation (default 0)."),
    seeds: int = typer.Option(1, "--seeds", help="Train N runs, seeds --seed .. --seed+N-1, each in its own "
                              "folder (--out DIR: DIR/seedK), and report mean ± std of their final-epoch top-1."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Folder with cifar-10-batches-py/ "
                                            "(default: $APERTURE_DATA, else the aperture_zoo folder in ~/.cache; on --resume, "
                                            "the run's own)."),
    download: Optional[bool] = typer.Option(None, "--download/--no-download",
                                            help="Download CIFAR-10 (MD5-checked) if it is not found "
                                            "(default: download; on --resume, as the run was started)."),
    subset: Optional[int] = typer.Option(None, "--subset", help="Train on a stratified subset of N images."),
    test_subset: Optional[int] = typer.Option(None, "--test-subset", help="Test on a stratified subset."),
    val_split: Optional[float] = typer.Option(None, "--val-split",
                                              help="Hold out N (or a fraction) of train, stratified; the run's "
                                              "temperature is fitted there. Default: 0 for CIFAR, 0.1 of each class "
                                              "for a folder (when that is at least 20 images); 0 turns it off."),
    device: Optional[str] = typer.Option(None, "--device", help="auto (default), cuda or cpu; on --resume, "
                                         "as the run was started."),
    compile_: Optional[bool] = typer.Option(None, "--compile/--no-compile",
                                            help="torch.compile the model (default off; on --resume, as started)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="A new or empty run directory (default: a fresh "
                                       "runs/NAME-TIME)."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue the run in this directory, with the "
                                          "options it was started with."),
    time_budget: Optional[float] = typer.Option(
        None, "--time-budget", help="Seconds this call may train: stops at an epoch boundary, checkpointed, "
        "before an epoch that would not fit (resume later with --resume)."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help=_DATASET_HELP),
    test_split: Optional[float] = typer.Option(None, "--test-split", help="A folder without test/: the share of "
                                               "each class held out for testing, with --seed (default 0.2)."),
    init: Optional[str] = typer.Option(None, "--init", help="Start from these weights: a published tag "
                                       "(resnet22.fast, SHA-256 pinned), hf-hub:ORG/NAME[@rev], local-dir:DIR, a run folder or a model.safetensors; a new head unless its "
                                       "class names are this dataset's (same names, same order); selects the finetune "
                                       "recipe unless --recipe is given."),
    freeze_backbone: bool = typer.Option(False, "--freeze-backbone", help="With --init: train the head only "
                                         "(a linear probe)."),
    no_progress: bool = typer.Option(False, "--no-progress", help="Per-epoch lines only."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Train a model to a run directory: model.safetensors, metrics.jsonl, curves.png, recipe.json."""
    from aperture_zoo.train import TrainConfig, TrainingInterrupted, fit
    from aperture_zoo.train.options import model_from_options, recipe_from_options
    from aperture_zoo.train.seeds import check_seeds, fit_seeds, is_seeds_parent, parent_seeds

    from .hints import train_hint

    with user_errors(hint=train_hint):
        check_seeds(seeds, resume)
        flags = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay,
                 "label_smoothing": label_smoothing, "mixup_alpha": mixup, "cutout": cutout, "ema_decay": ema}
        chosen = recipe_from_options(recipe or ("finetune" if init is not None and resume is None else None),
                                     set_, flags, resume)
        model = model_from_options(name, arch, resume)
        cfg = TrainConfig(
            model=model, recipe=chosen, seed=seed, data_dir=data_dir, download=download, subset=subset,
            test_subset=test_subset, val_split=val_split, device=device, compile=compile_, out_dir=out,
            resume=resume, progress=not no_progress, time_budget_s=time_budget, dataset=dataset,
            test_split=test_split, init=init, freeze_backbone=freeze_backbone,
        )
        if cfg.model is None and resume is None:
            raise typer.BadParameter("give a model name, e.g. `aperture train resnet22`, or --resume RUN_DIR")
        note = chosen.lr_note() if chosen is not None and resume is None else None
        if note and _is_main_rank():
            err_console.print(note, highlight=False)  # prose: wraps at the terminal width
        try:
            results = fit_seeds(cfg, seeds, fit)
        except TrainingInterrupted as exc:
            if _is_main_rank():
                err_console.print(f"[yellow]{safe(with_hint(exc, train_hint))}[/]", highlight=False, soft_wrap=True)
            # 75 (EX_TEMPFAIL) for a spent time budget: "not done yet, run again", not a failure
            raise typer.Exit(code=128 + int(exc.signum) if exc.signum else 75) from None
    if not _is_main_rank():
        return
    parent = parent_seeds(resume) if resume is not None and is_seeds_parent(resume) else []
    if seeds > 1 or parent:  # --resume of a --seeds folder: its seeds' figures and their mean ± std
        _print_seeds(results, parent or list(range(seed or 0, (seed or 0) + seeds)), json_out)
    else:
        _print_result(results[-1], json_out)


def _print_seeds(results: list, seeds: list[int], json_out: bool) -> None:
    from aperture_zoo.train.seeds import format_mean_std, seeds_summary

    many = seeds_summary(results, seeds)
    if json_out:
        print_json(many)
        return
    for run in many["runs"]:
        tta = "" if run["test_top1_flip_tta"] is None else f" (flip TTA {run['test_top1_flip_tta']:.2f}%)"
        console.print(f"seed {run['seed']}: final-epoch test top-1 {run['test_top1']:.2f}%{tta} -> "
                      f"{safe(run['run_dir'])}", highlight=False, soft_wrap=True)
    line = f"[bold green]done[/]: final-epoch test top-1 {format_mean_std([r.test_top1 for r in results])} %"
    tta_values = [r.test_top1_flip_tta for r in results if r.test_top1_flip_tta is not None]
    if tta_values:
        line += f"; with flip TTA {format_mean_std(tta_values)} %"
    console.print(line + " (mean ± sample std over seeds)", highlight=False)


def _print_result(result: Any, json_out: bool) -> None:
    summary = {
        "run_dir": str(result.run_dir), "test_top1": result.test_top1, "test_loss": result.test_loss,
        "epochs": result.epochs, "wall_time_s": result.wall_time_s,
        "train_images_per_s": result.train_images_per_s, "already_complete": result.already_complete,
        "drew_curves": result.drew_curves,
        "test_top1_flip_tta": result.test_top1_flip_tta,
    }
    if json_out:
        print_json(summary)
        return
    epochs = f"{result.epochs} epoch{'s' if result.epochs != 1 else ''}"
    console.print(
        ("[bold green]already complete[/] (nothing trained; drew the missing curves.png from metrics.jsonl): "
         if result.drew_curves else "[bold green]already complete[/] (nothing trained or written): "
         if result.already_complete else "[bold green]done[/]: ") + f"final-epoch test top-1 {result.test_top1:.2f}% after {epochs}"
        + ("" if result.test_top1_flip_tta is None else f" (flip TTA: {result.test_top1_flip_tta:.2f}%)")
        + ", "
        f"{result.wall_time_s:.1f}s, {result.train_images_per_s:,.0f} train img/s -> {safe(result.run_dir)}",
        highlight=False,
    )


@app.command("eval")
def eval_cmd(
    name: str = typer.Argument(..., help=MODEL_HELP),
    weights: Optional[str] = typer.Option(None, "--weights", "-w", help=WEIGHTS_HELP),
    pretrained: bool = typer.Option(False, "--pretrained", help="Use the published weights."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Folder with cifar-10-batches-py/."),
    download: bool = typer.Option(True, "--download/--no-download",
                                  help="Download CIFAR-10 (MD5-checked) if it is not found."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help=_DATASET_HELP + " Default: the one the "
                                          "weights were trained on (a folder: its held-out test images)."),
    unseen: bool = typer.Option(False, "--unseen", help="Score EVERY image of --dataset DIR (DIR/<class>/<image>), "
                                "which you declare these weights never trained on (new images collected later); its "
                                "classes are matched to the model's by name. Only checked: DIR is not the training "
                                "folder; eval.json records it as an unseen folder, never as the held-out test split."),
    subset: Optional[int] = typer.Option(None, "--subset", help="A stratified subset of N test images."),
    tta: bool = typer.Option(False, "--tta", help="Average with the horizontally flipped image."),
    batch_size: int = typer.Option(1000, "--batch-size", "-b", help="Images per forward pass (>= 1)."),
    device: str = typer.Option("auto", "--device", help="auto, cuda or cpu."),
    out: Optional[Path] = typer.Option(None, "--out", "-o",
                                       help="Where eval.json/confusion.png go (default: beside the weights "
                                       "file when it is yours, else eval-NAME; with --unseen, its subfolder "
                                       "unseen-FOLDER)."),
    corruptions: Optional[str] = typer.Option(
        None, "--corruptions", help="Also test on corrupted copies: 'all' (gaussian_noise, gaussian_blur, "
        "jpeg_compression, contrast, brightness at severities 1-5, CIFAR-10-C parameters) or some, e.g. 'contrast:5,brightness'."),
    corruption_images: Optional[int] = typer.Option(
        None, "--corruption-images", help="A stratified sample of N test images per corruption and severity "
        "(default: all evaluated images)."),
    write_temperature: Optional[Path] = typer.Option(
        None, "--write-temperature", help="Also write a copy of the weights to this new file (never an existing "
        "one) with the calibrator and the temperature fitted here on all the evaluated images in its metadata, "
        "and the SHA-256 of the weights they were fitted for."),
    json_out: bool = typer.Option(False, "--json", help="Print eval.json to stdout."),
) -> None:
    """Test top-1, per-class accuracy, confusion matrix and calibration (ECE, NLL, Brier before and
    after the temperature); writes eval.json, confusion.png and reliability.png."""
    from aperture_zoo.train.distributed import resolve_device
    from aperture_zoo.train.evaluate import evaluate, format_confusion, format_robustness, write_eval_report
    from aperture_zoo.progress import counting
    from aperture_zoo.train.evaluate import check_eval_options
    with user_errors():
        from aperture_zoo.corruptions import parse_corruptions

        check_eval_options(batch_size, subset, write_temperature)
        if unseen:  # before any model is loaded
            from aperture_zoo.unseen import check_unseen_dataset

            check_unseen_dataset(dataset)
        chosen = parse_corruptions(corruptions)
        if corruption_images is not None and not chosen:
            from aperture_zoo.train.evaluate import EvalError

            raise EvalError("--corruption-images sets the sample for --corruptions; add --corruptions all (or some)")
        if corruption_images is not None and corruption_images < 1:
            from aperture_zoo.train.evaluate import EvalError

            raise EvalError(f"--corruption-images must be at least 1 test image, got {corruption_images}")
        model, used, used_sha256 = model_for_command(name, weights, pretrained)
        ref = weights if weights is not None else name if names_weights(name) else None
        out_dir = out or (used.parent if ref is not None and _on_this_disk(ref) else Path(f"eval-{model.spec.name}"))
        if unseen and out is None:  # never in place of the held-out split's eval.json
            from aperture_zoo.datasets import dataset_name

            out_dir = out_dir / f"unseen-{Path(dataset_name(dataset)).name}"
        from aperture_zoo.catalog import refuse_other_weights_folder, refuse_published_folder

        refuse_other_weights_folder(out_dir, used_sha256, "an eval.json and figures of other weights would replace or "
                                    "sit beside its own")
        from aperture_zoo.files import CONFUSION_FILENAME, EVAL_FILENAME, RELIABILITY_FILENAME
        from aperture_zoo.provenance import refuse_foreign

        refuse_foreign(out_dir, [EVAL_FILENAME, CONFUSION_FILENAME, RELIABILITY_FILENAME], "the evaluation",
                       "aperture eval ... --out DIR")  # before the work, as in write_eval_report
        if write_temperature is not None:  # a new file, but beside published weights it would pass for theirs
            refuse_published_folder(write_temperature.parent, None, "a re-calibrated copy of weights would sit beside "
                                    "them", fix="Write it elsewhere with --write-temperature FILE")
        dev = resolve_device(device)
        split, test_set, scored = _test_images(model, used, dataset, unseen, data_dir, download, subset)
        with counting(err_console, len(split), safe(f"evaluating {name} on {scored} ({dev.type})")) as advance:
            result = evaluate(model, split, batch_size=batch_size, device=dev, tta=tta, on_batch=advance)
        if test_set is not None:
            result.extra["test_set"] = test_set
        if chosen:
            from aperture_zoo.train.robustness import evaluate_corruptions

            with err_console.status("corruptions") as status:
                result.extra["corruptions"] = evaluate_corruptions(
                    model, split, chosen, max_images=corruption_images, batch_size=batch_size, device=dev, tta=tta,
                    on_step=lambda m: status.update(safe(f"evaluating {name} on {m}")))
        report = write_eval_report(result, out_dir, model.spec.name, ref, used)
        if write_temperature is not None:
            _write_temperature(result, used, used_sha256, write_temperature)
    if json_out:
        print_json(report)
        return
    scored = scored if test_set is not None else f"{result.num_images} test images"
    console.print(f"[bold]{safe(name)}[/] on {safe(scored)}{' (flip TTA)' if tta else ''}: "
                  f"top-1 [bold]{result.top1:.2f}%[/], loss {result.loss:.4f}, "
                  f"{result.images_per_s:,.0f} img/s on {result.device}", highlight=False)
    for cls, acc in result.per_class_top1.items():  # the user's class names: no markup, [brackets] kept
        console.print(f"  {fragment(cls):<12} " + ("   no images" if acc is None else f"{acc:6.2f}%"), highlight=False,
                      markup=False)
    console.print(format_confusion(result), highlight=False, markup=False)
    if test_set is not None:
        from aperture_zoo.unseen import checked_line

        console.print(safe(checked_line(test_set)), highlight=False)
    for line in format_robustness(result.extra):
        console.print(line, highlight=False, soft_wrap=True)
    console.print(f"wrote {safe(out_dir / 'eval.json')}, {safe(out_dir / 'confusion.png')} and "
                  f"{safe(out_dir / 'reliability.png')}", highlight=False)


def _test_images(model: Any, used: Path, dataset: Optional[str], unseen: bool, data_dir: Optional[Path], download: bool,
                 subset: Optional[int]) -> tuple[Any, Optional[dict], str]:
    """(split, eval.json's test_set or None, what was scored in words): the held-out split of the weights'
    dataset, or with ``--unseen`` every image of the user's folder."""
    from aperture_zoo.data import load_split, subset as take_subset
    from aperture_zoo.datasets import dataset_for_weights
    from aperture_zoo.weights import decode_metadata

    meta = decode_metadata(getattr(model, "weights_metadata", {}))
    say = lambda m: err_console.print(safe(m), highlight=False)  # noqa: E731
    if not unseen:
        own = dataset_for_weights(dataset, data_dir, download, meta, say=say)
        split = take_subset(own.test if own is not None else load_split("test", data_dir, download), subset, 0)
        return split, None, f"{len(split):,} test images"
    from aperture_zoo.unseen import test_set_line, unseen_folder

    folder = unseen_folder(dataset, meta, model.spec.label_names, say=say, weights_file=used)
    for line in folder.report_lines:  # classes, skipped files, copies used once: nothing dropped unsaid
        err_console.print(line, highlight=False, markup=False)
    split = take_subset(folder.split, subset, 0)
    test_set = {**folder.record, "num_images": len(split)}
    return split, test_set, test_set_line(test_set, len(split))


def _on_this_disk(ref: str) -> bool:
    """A path or local-dir: source (eval.json goes beside it), not a Hub repo or a published tag (its cache)."""
    from aperture_zoo.pretrained import source_kind

    return source_kind(ref) in ("path", "dir")


def _write_temperature(result: Any, weights: Any, sha256: Any, out: Path) -> None:
    """``eval --write-temperature``: a copy of the weights with the calibrator and temperature this
    evaluation fitted."""
    from aperture_zoo.calibrators import Calibrator
    from aperture_zoo.train.evaluate import temperature_to_write
    from aperture_zoo.weights import write_with_temperature

    t, calibrator, fitted_on = temperature_to_write(result)
    write_with_temperature(weights, out, t, fitted_on, sha256, calibrator)
    err_console.print(f"wrote {safe(out)}: these weights with the calibrator {Calibrator.from_dict(calibrator).describe()} "
                      f"and temperature {t:.4f} (fitted on {fitted_on})", highlight=False)


@app.command("train-zoo")
def train_zoo_cmd(
    models: list[str] = typer.Argument(None, help="Models in training order (default: all six, registry order)."),
    runs_dir: Path = typer.Option(Path("runs/zoo"), "--runs-dir", help="One run directory per model, and the summary."),
    recipe: str = typer.Option("fast", "--recipe", "-r", help="fast (default), long, sprint, paper, table1 or "
                               "finetune."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Override the recipe's epochs."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b",
                                             help="Global batch size; the lr follows it linearly unless --lr."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate."),
    set_: list[str] = typer.Option([], "--set", help="Any recipe field: --set cutout=0 (repeatable); "
                                   "--set batch_size=N scales the lr linearly unless --set lr= is given."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Folder with cifar-10-batches-py/."),
    download: bool = typer.Option(True, "--download/--no-download",
                                  help="Download CIFAR-10 (MD5-checked) if it is not found."),
    subset: Optional[int] = typer.Option(None, "--subset", help="Train on a stratified subset (a rehearsal)."),
    test_subset: Optional[int] = typer.Option(None, "--test-subset", help="Test on a stratified subset."),
    device: str = typer.Option("auto", "--device", help="auto, cuda or cpu."),
    seed: int = typer.Option(0, "--seed", help="First seed (runs of seed 0 are RUNS/NAME, others RUNS/NAME-seedK)."),
    seeds: int = typer.Option(1, "--seeds", help="Seeds per model (--seed .. --seed+N-1); the summary gives "
                              "mean ± std of the final-epoch top-1."),
    compile_: bool = typer.Option(False, "--compile", help="torch.compile each model."),
    time_budget: Optional[float] = typer.Option(None, "--time-budget",
                                                help="Seconds each model may train in this call."),
    deadline: Optional[float] = typer.Option(None, "--deadline",
                                             help="Seconds for the whole call: no epoch starts that would "
                                             "overrun it (each model's first epoch always runs); paused "
                                             "runs are checkpointed, the call exits 75 and the same "
                                             "command resumes."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help=_DATASET_HELP),
    export: bool = typer.Option(True, "--export/--no-export", help="Export each model to ONNX and validate it."),
    provider: str = typer.Option("auto", "--provider", help="onnxruntime provider for validation: auto, cuda, cpu."),
    no_progress: bool = typer.Option(False, "--no-progress", help="Per-epoch lines only."),
    json_out: bool = typer.Option(False, "--json", help="Print summary.json's models."),
) -> None:
    """Train, check and export the zoo; resumes when run again; writes summary.json and summary.md."""
    from functools import partial

    from aperture_zoo.train import TrainingInterrupted
    from aperture_zoo.train.options import recipe_from_options
    from aperture_zoo.train.zoo import ZooConfig, train_zoo

    from .hints import train_hint

    with user_errors(hint=train_hint):
        chosen = recipe_from_options(recipe, set_, {"epochs": epochs, "batch_size": batch_size, "lr": lr})
        if chosen.lr_note():
            err_console.print(chosen.lr_note(), highlight=False)
        cfg = ZooConfig(models=models or None, runs_dir=runs_dir, recipe=chosen, data_dir=data_dir,
                        download=download, device=device, compile=compile_, subset=subset, seed=seed, seeds=seeds,
                        test_subset=test_subset, time_budget_s=time_budget, deadline_s=deadline,
                        progress=not no_progress, dataset=dataset)
        exporter = None
        if export:
            from aperture_zoo.export.pipeline import export_run

            exporter = partial(export_run, provider=provider, data_dir=data_dir, dataset=dataset)
        try:
            result = train_zoo(cfg, say=lambda msg: err_console.print(safe(msg), highlight=False, soft_wrap=True),
                               exporter=exporter)
        except TrainingInterrupted as exc:  # Ctrl-C: the zoo resumes by running the same command, not `train`
            err_console.print(f"[yellow]{safe(exc)}. Continue the zoo by running the same `aperture train-zoo` "
                              "command again (each model resumes where it stopped)[/]", highlight=False, soft_wrap=True)
            raise typer.Exit(code=128 + int(exc.signum) if exc.signum else 75) from None
    if json_out:
        print_json(result.rows)
    else:
        from aperture_zoo.terminal import shown

        sys.stdout.write(shown((result.runs_dir / "summary.md").read_text()))
    if not result.complete:  # 75 (EX_TEMPFAIL): paused by a budget; the same command continues
        raise typer.Exit(code=75)
