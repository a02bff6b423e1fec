"""Model cards and Hub folders: config.json, README.md and the folder they describe, written whole.

The facts come from files (``card_facts.gather``: every derived file checked against the weights by
its SHA-256), the prose from ``card_text``; this module writes timm-style ``config.json`` and the
folder. Nothing is typed by hand, and a model without trained weights gets a card that says so and
claims no accuracy. Output is deterministic (no timestamps, sorted keys) so a test can regenerate
the committed cards and catch stale ones. A folder is written as one set (``filesets``): staged,
then moved in under the folder's lock, so a reader never finds a card beside weights it does not
describe.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from ._version import __version__
from .card_facts import CardError, CardFacts, gather
from .card_text import LICENSE_ID, dataset_of, escape_md, render_card
from .catalog import refuse_published_folder
from .files import (CARD_FILENAME, CONFIG_FILENAME, EVAL_FILENAME, FIGURE_FILES, LICENSE_FILENAME, METRICS_FILENAME,
                    ONNX_FILENAME, PROVENANCE_FILENAME, REPORT_SUFFIX, RUN_FILES, RUNTIMES_FILENAME, WEIGHTS_FILENAME,
                    MODEL_SUFFIXES, ONNX_SUFFIX, atomic_write_text, judged_file)
from .filesets import HIDDEN_PATTERNS, copy_file, folder_lock, move_in, staged
from .provenance import refuse_foreign

__all__ = ["CardError", "CardFacts", "build_config", "escape_md", "gather", "license_text", "render_card",
           "stale_files", "write_card", "write_folder"]
# What a card folder holds that the card describes (weights, run outputs, exports, the card itself).
GENERATED = (CARD_FILENAME, CONFIG_FILENAME, PROVENANCE_FILENAME, LICENSE_FILENAME)


# -- config.json ---------------------------------------------------------------------------------
def build_config(facts: CardFacts) -> dict[str, Any]:
    """timm-style config.json: architecture, model args, preprocessing, labels, metrics, recipe."""
    spec, meta = facts.spec, facts.weights or {}
    config: dict[str, Any] = {
        "architecture": spec.name,
        "library": "aperture_zoo",
        "package_version": meta.get("package_version", __version__),
        "num_classes": spec.num_classes,
        "num_features": spec.channels[-1],
        "model_args": spec.arch_dict(),
        "label_names": list(spec.label_names),
        "pretrained_cfg": {
            "input_size": list(spec.input_size),
            "mean": list(spec.mean),
            "std": list(spec.std),
            "crop_pct": 1.0,
            "num_classes": spec.num_classes,
            "first_conv": "conv1",
            "classifier": "fc",
            "license": LICENSE_ID,
        },
        "params": facts.params,
        "flops_per_image": facts.flops,
        "trained": facts.trained,
    }
    if facts.weights is not None:
        config["files"] = {WEIGHTS_FILENAME: {"sha256": facts.weights_sha256, "size": facts.weights_size}}
        config["recipe"] = facts.recipe
        config["training"] = {k: meta.get(k) for k in (
            "epochs", "seed", "train_device", "world_size", "wall_time_s", "train_images_per_s",
            "subset", "val_split", "test_subset", "ema", "torch_version")}
    if facts.trained:
        config["metrics"] = {"dataset": dataset_of(meta)[0], "split": "test", "top1": meta["test_top1"],
                             "test_loss": meta.get("test_loss"), "epoch": meta.get("epochs")}
        if facts.eval:
            config["metrics"]["per_class_top1"] = facts.eval.get("per_class_top1")
            config["metrics"].update(_eval_metrics(facts.eval))
    return config


def _eval_metrics(ev: dict[str, Any]) -> dict[str, Any]:
    """Calibration, flip-TTA and corruption figures of an ``eval.json`` (those it has)."""
    out: dict[str, Any] = {}
    if "ece" in ev:
        keys = ("calibrator", "calibrator_fitted_on", "temperature_scaling", "ece", "classwise_ece", "nll", "brier",
                "ece_calibrated", "classwise_ece_calibrated", "nll_calibrated", "brier_calibrated", "ece_bins") \
            if "calibrator" in ev else ("temperature", "temperature_fitted_on", "ece", "ece_calibrated", "nll",
                                        "nll_calibrated", "brier", "brier_calibrated", "ece_bins")
        out["calibration"] = {k: ev.get(k) for k in keys}
        if (ev.get("tta_calibration") or {}).get("calibrator"):
            out["calibration_tta"] = {k: ev["tta_calibration"].get(k) for k in keys if k != "ece_bins"}
    if "top1_by_tta" in ev:
        out["top1_tta_flip"] = ev["top1_by_tta"]["flip"]
    corr = ev.get("corruptions")
    if corr:
        out["corruptions"] = {k: corr.get(k) for k in ("mean", "worst", "worst_mean", "num_images", "per_corruption")}
    return out


def license_text() -> str:
    """The package's MIT license: from the installed distribution (a wheel carries it in
    ``.dist-info/licenses/``), else from the source checkout this module runs from."""
    from importlib import metadata

    try:
        text = metadata.distribution("aperture-zoo").read_text(f"licenses/{LICENSE_FILENAME}")
    except metadata.PackageNotFoundError:
        text = None
    checkout = Path(__file__).resolve().parent.parent / LICENSE_FILENAME
    if not text and checkout.is_file():
        text = checkout.read_text()
    if not text:
        raise CardError("the package's LICENSE file is missing, so a Hub folder cannot carry it; reinstall aperture_zoo")
    return text


def write_folder(
    name: str, out_dir: str | os.PathLike[str], weights: str | os.PathLike[str], *,
    onnx: str | os.PathLike[str] | None = None, repo_id: str | None = None,
) -> Path:
    """The one writer of what a Hub folder holds (huggingface_hub's ``save_pretrained``).

    ``weights`` as model.safetensors, the run outputs and ONNX reports found beside it, ``onnx``
    as model.onnx (with its report), the LICENSE, then config.json and README.md describing exactly
    those files. Every derived file is checked against the weights' SHA-256 first (a stale one is
    refused, naming it), and the set is moved in whole. ``aperture push`` writes one into a temporary
    folder and uploads it; ``aperture card --run`` writes one where it is told.
    """
    from .files import file_sha256
    from .provenance import check_folder, check_onnx, check_report
    from .weights import decode_metadata, read_metadata

    out, weights = Path(out_dir), Path(weights)
    # Everything is checked before the first copy, so a refused folder leaves nothing behind.
    arch = decode_metadata(read_metadata(weights)).get("arch")
    if arch and arch != name:
        raise CardError(f"{weights} holds weights for {arch}, not {name}; write the card with "
                        f"`aperture card {arch} --run {weights.parent}`")
    _refuse_replacing_published(name, out / WEIGHTS_FILENAME, weights)
    _keep_hand_written(out)
    sha = file_sha256(weights)
    copies: dict[str, Path] = {}
    if onnx is not None:  # the file asked for first: its refusal is the one to read
        onnx = Path(onnx)
        check_onnx(onnx, sha, name)
        report = onnx.with_name(onnx.name.removesuffix(".onnx") + REPORT_SUFFIX)
        if report.is_file():
            check_report(report, sha, onnx, name)
        copies[ONNX_FILENAME] = onnx
        copies[Path(ONNX_FILENAME).stem + REPORT_SUFFIX] = report
    check_folder(weights.parent, sha, name, onnx_files=False)  # the reports, matrix and eval.json copied below
    _check_training_log(weights.parent / METRICS_FILENAME, decode_metadata(read_metadata(weights)))
    own = {p.name for p in copies.values()} if onnx is not None and onnx.resolve().parent == weights.resolve().parent else set()
    extras = [*RUN_FILES, RUNTIMES_FILENAME,  # the uploaded ONNX file's report goes once, as model.report.json
              *(p.name for p in weights.parent.glob("*" + REPORT_SUFFIX) if p.name not in own)]
    copies = {WEIGHTS_FILENAME: weights, **{extra: weights.parent / extra for extra in extras}, **copies}
    refuse_foreign(out, [t for t, src in copies.items() if src.is_file()], "the card's folder", "--out DIR")
    with staged(out) as stage, folder_lock(out):
        for target, src in copies.items():
            if src.is_file():
                copy_file(src, stage / target)
        atomic_write_text(stage / LICENSE_FILENAME, license_text())
        _keep_leftovers(out, stage, sha, name)
        _write_card_files(name, stage, stage, stage / WEIGHTS_FILENAME, repo_id)
        move_in(stage, out, [p.name for p in stage.iterdir()])
    return out


def _check_training_log(metrics: Path, meta: dict) -> None:
    """The run's log goes beside the weights only if it is the one they were trained with: by the SHA-256 the
    weights record of it, or (older weights, which record none) by its last test figure. A run folder whose
    model.safetensors was replaced holds another run's log, and two runs often end at one figure."""
    from .files import file_sha256

    if not metrics.is_file():
        return
    pinned = meta.get("metrics_sha256")
    if pinned is not None:
        if file_sha256(metrics) != pinned:
            raise CardError(f"{metrics} differs from the log these weights were trained with (they record its SHA-256 "
                            f"{str(pinned)[:12]}...: it was changed, or is another run's log); put back the run's own "
                            "log, or remove it to write the card without the training log")
        return
    recorded = meta.get("test_top1")
    if not isinstance(recorded, (int, float)):
        return
    scored = []
    for line in metrics.read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("test_top1"), (int, float)):
            scored.append(row["test_top1"])
    if scored and abs(scored[-1] - recorded) > 1e-3:
        raise CardError(
            f"{metrics} does not end at these weights (its last test top-1 {scored[-1]:.4f}, the weights record "
            f"{recorded:.4f}): the run folder holds another run's log; write the card from the folder that trained them")


def _keep_leftovers(out: Path, stage: Path, sha: str, name: str) -> None:
    """Files already in ``out`` that the new set does not bring stay only if they belong to these
    weights (shown by hash; run outputs that record none, only while the weights are the same): they
    are linked into the stage so the card describes them. Any other is refused, naming it."""
    from .files import file_sha256
    from .provenance import check_eval, check_figure, check_model, check_report, check_runtimes

    same_weights = (out / WEIGHTS_FILENAME).is_file() and file_sha256(out / WEIGHTS_FILENAME) == sha
    for old in sorted(out.iterdir()) if out.is_dir() else ():
        if (stage / old.name).exists() or old.name in GENERATED:
            continue
        if old.name.endswith(MODEL_SUFFIXES):  # any format: ONNX by its metadata, the others by their report
            check_model(old, sha, name)
            if not old.name.endswith(ONNX_SUFFIX):
                continue  # it stays where it is; the card lists it by its report, linked below
        elif not old.is_file():
            continue
        elif old.name.endswith(REPORT_SUFFIX):
            judged = judged_file(old.name)
            check_report(old, sha, stage / judged if (stage / judged).exists() else out / judged, name)
        elif old.name == RUNTIMES_FILENAME:
            check_runtimes(old, sha, out, name)
        elif old.name == EVAL_FILENAME:
            check_eval(old, sha, name)
        elif old.name in FIGURE_FILES:
            check_figure(old, sha, name, stage / EVAL_FILENAME if (stage / EVAL_FILENAME).exists() else out / EVAL_FILENAME)
        elif old.name in RUN_FILES and not same_weights:
            raise CardError(f"{old} was written for the weights {out} held before, not {name}'s new ones, and the "
                            "card would show it; remove it, or write the folder elsewhere (--out)")
        else:
            continue
        try:
            os.link(old, stage / old.name)
        except OSError:  # a file system without hard links
            copy_file(old, stage / old.name)


def write_card(
    name: str,
    out_dir: str | os.PathLike[str],
    *,
    weights: str | os.PathLike[str] | None = None,
    run_dir: str | os.PathLike[str] | None = None,
    repo_id: str | None = None,
) -> Path:
    """Write README.md and config.json for ``name`` into ``out_dir``.

    With ``run_dir`` the folder is written whole (``write_folder``): the run's model.safetensors,
    metrics.jsonl, curves.png and eval.json are copied in first, so the card describes exactly
    the files that sit beside it.
    """
    out = Path(out_dir)
    if weights is not None:  # before any file in ``out`` is looked at: its neighbours are not the question
        from .files import file_sha256

        refuse_published_folder(out, file_sha256(weights), "a card for your weights would describe them beside "
                                "the published ones", CardError)
    if run_dir is not None:
        run = Path(run_dir)
        if not (run / WEIGHTS_FILENAME).is_file():
            raise CardError(f"run dir {run} has no {WEIGHTS_FILENAME}; pass the folder a training run wrote")
        return write_folder(name, out, run / WEIGHTS_FILENAME, repo_id=repo_id)
    _keep_hand_written(out)
    with staged(out) as stage, folder_lock(out):
        written = _write_card_files(name, out, stage, Path(weights) if weights is not None else None, repo_id)
        move_in(stage, out, written)
    return out


def _write_card_files(name: str, folder: Path, stage: Path, weights: Path | None, repo_id: str | None) -> list[str]:
    """weights.json (beside a weights file), config.json and README.md for ``folder``'s files, written into ``stage``."""
    facts = gather(name, folder, weights, repo_id)
    written = []
    if facts.weights is not None and (folder / WEIGHTS_FILENAME).is_file():
        record = {"sha256": facts.weights_sha256, "size": facts.weights_size, "metadata": facts.weights}
        atomic_write_text(stage / PROVENANCE_FILENAME, json.dumps(record, indent=2, sort_keys=True) + "\n")
        written.append(PROVENANCE_FILENAME)
    card = render_card(facts)
    config = {**build_config(facts), "readme_sha256": hashlib.sha256(card.encode()).hexdigest()}
    atomic_write_text(stage / CONFIG_FILENAME, json.dumps(config, indent=2, sort_keys=True) + "\n")
    atomic_write_text(stage / CARD_FILENAME, card)
    return [*written, CONFIG_FILENAME, CARD_FILENAME]


def _own_config(folder: Path) -> tuple[bool, dict[str, Any] | None]:
    """Whether ``folder`` holds a config.json, and its record when this package wrote it (None: another tool's)."""
    config = folder / CONFIG_FILENAME
    if not config.is_file():
        return False, None
    try:
        data = json.loads(config.read_text())
    except (OSError, ValueError):
        return True, None
    return True, data if isinstance(data, dict) and data.get("library") == "aperture_zoo" else None


def hand_edited_card(folder: Path, config: tuple[bool, dict[str, Any] | None] | None = None) -> bool:
    """``folder``'s README.md is not the card this package last wrote there: the SHA-256 its config.json records
    of it differs, or the config.json is missing or another tool's. A card of this package from before the record
    (its config.json without readme_sha256) cannot be told from an edited one: taken as the package's own."""
    readme = folder / CARD_FILENAME
    if not readme.is_file():
        return False
    _, data = config or _own_config(folder)
    recorded = data.get("readme_sha256", "") if data is not None else None
    return recorded != "" and recorded != hashlib.sha256(readme.read_bytes()).hexdigest()


def _keep_hand_written(out: Path) -> None:
    """Nothing is lost: a README.md written or edited by hand is never replaced by a generated card, nor a
    weights.json this package did not write (``provenance.refuse_foreign``)."""
    present, ours = config = _own_config(out)
    if hand_edited_card(out, config):
        raise CardError(f"{out / CARD_FILENAME} is not the card aperture last wrote there (edited by hand, or another "
                        "tool's): the card would replace your text; move it aside (e.g. to NOTES.md) or remove it, then "
                        "write the card again")
    license_file = out / LICENSE_FILENAME
    theirs = present and ours is None
    if theirs or (license_file.is_file() and license_file.read_text(errors="replace") != license_text()):
        mine = out / CONFIG_FILENAME if theirs else license_file
        raise CardError(f"{mine} is not a file aperture wrote (another tool's, or yours): the card would replace it; "
                        "move it aside or remove it, then write the card again (or write the card to another --out)")
    refuse_foreign(out, [PROVENANCE_FILENAME], "the card", "--out DIR")


def _refuse_replacing_published(name: str, current: Path, new: Path) -> None:
    """A run's card must never overwrite the zoo's published (pinned) weights (``catalog.refuse_published_folder``)."""
    from .files import file_sha256

    refuse_published_folder(current.parent, file_sha256(new), "a card for your run would replace them", CardError)


def stale_files(name: str, folder: str | os.PathLike[str]) -> list[str]:
    """Generated files of the card in ``folder`` that differ from a fresh regeneration.

    The card is regenerated in a temporary copy of ``folder`` (so weights or ``weights.json``
    there are taken into account) and compared byte for byte; ``[]`` means up to date. A missing
    file counts as stale.
    """
    import tempfile

    folder = Path(folder)
    generated = (CARD_FILENAME, CONFIG_FILENAME)
    with tempfile.TemporaryDirectory(prefix="aperture-card-") as tmp:
        copy = Path(tmp) / name
        if folder.is_dir():
            shutil.copytree(folder, copy, ignore=shutil.ignore_patterns(*generated, *HIDDEN_PATTERNS))
        write_card(name, copy)
        return [f for f in generated
                if not (folder / f).is_file() or (folder / f).read_bytes() != (copy / f).read_bytes()]
