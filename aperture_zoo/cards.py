"""Model cards (README.md with Hub metadata) and timm-style config.json, generated from facts.

Every number comes from a measurement or a run output: parameters and FLOPs from
``summary.measure``, accuracy/recipe/hardware from the weights' metadata, per-class accuracy from
``eval.json``, every exported file's parity from ``*.report.json``. Nothing is typed by hand, and a model without
trained weights gets a card that says so and claims no accuracy. Output is deterministic (no
timestamps, sorted keys) so a test can regenerate the committed cards and catch stale ones.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .catalog import DEFAULT_HUB_ORG, find_weights
from .errors import ApertureError
from ._version import __version__
from .files import (CARD_FILENAME, CONFIG_FILENAME, EVAL_FILENAME, ONNX_FILENAME, PROVENANCE_FILENAME, REPORT_SUFFIX,
                    RUN_FILES, RUNTIMES_FILENAME, WEIGHTS_FILENAME, atomic_path, atomic_write_text, read_json)
from .registry import REPORT, ModelSpec, get_spec
LICENSE = "mit"


class CardError(ApertureError, ValueError):
    """A card cannot be written from the given inputs; the message names the missing piece."""


@dataclass
class CardFacts:
    """What a card states, gathered from files; ``weights`` is None for an untrained model."""

    spec: ModelSpec
    params: int
    flops: int
    repo_id: str
    weights: dict[str, Any] | None = None   # decoded safetensors metadata
    weights_sha256: str | None = None
    weights_size: int | None = None
    eval: dict[str, Any] | None = None
    onnx_reports: dict[str, dict[str, Any]] = field(default_factory=dict)  # file name -> report
    runtimes: dict[str, Any] | None = None  # the runtime matrix, when measured
    has_onnx: bool = False

    @property
    def trained(self) -> bool:
        return self.weights is not None and self.weights.get("test_top1") is not None

    @property
    def recipe(self) -> dict[str, Any]:
        return dict((self.weights or {}).get("recipe") or {})

    @property
    def uses_mixup(self) -> bool:
        recipe = self.recipe
        return bool(recipe.get("mixup")) or float(recipe.get("mixup_alpha") or 0) > 0


def _read_json(path: Path) -> Any:
    return read_json(path, "regenerate it", CardError)


def gather(name: str, source_dir: Path, weights: Path | None = None, repo_id: str | None = None) -> CardFacts:
    """Facts for ``name`` from ``weights`` (else ``source_dir/model.safetensors``, else the
    committed ``weights.json``), ``eval.json`` and ``*.report.json`` in ``source_dir``."""
    from .summary import measure
    from .files import file_sha256
    from .weights import decode_metadata, read_metadata, spec_from_metadata

    spec = get_spec(name)
    weights = weights or (source_dir / WEIGHTS_FILENAME)
    if weights.is_file():  # a run on other data: its own head, class names and normalisation
        own = spec_from_metadata(read_metadata(weights))
        spec = own if own is not None and own.name == name else spec
    measured = measure(spec)
    record = find_weights(name)
    facts = CardFacts(spec, measured["params"], measured["flops"],
                      repo_id or (record and record.hub_repo) or f"{DEFAULT_HUB_ORG}/{name}")
    # The default org is fixed here, not read from $APERTURE_HUB_ORG: cards must not depend on the
    # environment they are generated in.
    if weights.is_file():
        facts.weights = decode_metadata(read_metadata(weights))
        facts.weights_sha256, facts.weights_size = file_sha256(weights), weights.stat().st_size
        arch = facts.weights.get("arch")
        if arch and arch != name:
            raise CardError(f"{weights} holds weights for {arch}, not {name}; pass the right file")
    elif (source_dir / PROVENANCE_FILENAME).is_file():
        record = _read_json(source_dir / PROVENANCE_FILENAME)
        facts.weights, facts.weights_sha256, facts.weights_size = (
            record["metadata"], record["sha256"], record["size"])
    _check_recorded_figures(facts, weights if weights.is_file() else source_dir / PROVENANCE_FILENAME)
    if (source_dir / EVAL_FILENAME).is_file():
        facts.eval = _read_json(source_dir / EVAL_FILENAME)
    for report in sorted(source_dir.glob("*" + REPORT_SUFFIX)):
        stem = report.name.removesuffix(REPORT_SUFFIX)  # other formats keep their suffix: resnet22.int8.pte.report.json
        facts.onnx_reports[stem if stem.endswith((".xml", ".pte", ".tflite", ".mlpackage")) else stem + ".onnx"] = _read_json(report)
    if (source_dir / RUNTIMES_FILENAME).is_file():
        facts.runtimes = _read_json(source_dir / RUNTIMES_FILENAME)
    facts.has_onnx = bool(facts.onnx_reports) or any(source_dir.glob("*.onnx"))
    return facts


def _check_recorded_figures(facts: CardFacts, where: Path) -> None:
    """A card never prints an accuracy the weights' metadata holds but could not be: refuse it."""
    import math

    top1 = (facts.weights or {}).get("test_top1")
    if top1 is not None and (isinstance(top1, bool) or not isinstance(top1, (int, float))
                             or not math.isfinite(top1) or not 0 <= top1 <= 100):
        raise CardError(f"{where} records test_top1={top1!r}, not an accuracy between 0 and 100: its metadata is "
                        "damaged; evaluate the weights again (aperture eval) or save them again with save_weights")
    dataset = (facts.weights or {}).get("dataset")
    expected = {"cifar10": 10, "cifar100": 100}.get(dataset) if isinstance(dataset, str) else None
    if expected is not None and facts.spec.num_classes != expected:
        raise CardError(f"{where} says it was trained on {dataset}, but its head has {facts.spec.num_classes} classes, "
                        f"not {expected}: its metadata is damaged; save the weights again with save_weights")


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
            "license": LICENSE,
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
        config["metrics"] = {"dataset": _dataset(meta)[0], "split": "test", "top1": meta["test_top1"],
                             "test_loss": meta.get("test_loss"), "epoch": meta.get("epochs")}
        if facts.eval:
            config["metrics"]["per_class_top1"] = facts.eval.get("per_class_top1")
            config["metrics"].update(_eval_metrics(facts.eval))
    return config


def _eval_metrics(ev: dict[str, Any]) -> dict[str, Any]:
    """Calibration, flip-TTA and corruption figures of an ``eval.json`` (those it has)."""
    out: dict[str, Any] = {}
    if "ece" in ev:
        out["calibration"] = {k: ev.get(k) for k in (
            "temperature", "temperature_fitted_on", "ece", "ece_calibrated", "nll", "nll_calibrated",
            "brier", "brier_calibrated", "ece_bins")}
    if "top1_by_tta" in ev:
        out["top1_tta_flip"] = ev["top1_by_tta"]["flip"]
    corr = ev.get("corruptions")
    if corr:
        out["corruptions"] = {k: corr.get(k) for k in ("mean", "worst", "worst_mean", "num_images", "per_corruption")}
    return out


# -- README.md -----------------------------------------------------------------------------------
def _card_data(facts: CardFacts) -> Any:
    """The card's YAML front matter (Hub metadata, model-index with the final-epoch accuracy)."""
    from huggingface_hub import EvalResult, ModelCardData

    key, label = _dataset(facts.weights or {})
    tags = ["image-classification", *([key] if key in ("cifar10", "cifar100") else []), "resnet", "pytorch",
            "safetensors", "aperture_zoo"]
    if facts.has_onnx:
        tags.append("onnx")
    results = None
    if facts.trained:
        results = [EvalResult(
            task_type="image-classification", task_name="Image Classification",
            dataset_type=key, dataset_name=label, dataset_split="test",
            metric_type="accuracy", metric_name="Top-1 accuracy (final epoch)",
            metric_value=round(float(facts.weights["test_top1"]), 2),
        )]
    data = ModelCardData(
        license=LICENSE, library_name="aperture_zoo", tags=tags,
        datasets=[key] if key in ("cifar10", "cifar100") else None,
        metrics=["accuracy"], pipeline_tag="image-classification", model_name=facts.spec.name,
        eval_results=results,
    )
    return data


def _dataset(meta: dict[str, Any]) -> tuple[str, str]:
    """(key, name) of the dataset the weights were trained on: cifar10, cifar100, or an image folder."""
    name = meta.get("dataset") if isinstance(meta.get("dataset"), str) else "cifar10"
    if name in ("cifar10", "cifar100"):
        return name, {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}[name]
    return "image-folder", f"`{Path(name).name}` image folder"


def _speed(ev: dict[str, Any]) -> str:
    """The evaluation's pace; each image counted once even where its mirror ran too (TTA figures)."""
    rate = ev.get("images_per_s")
    text = f"{rate:.1f} images/s" if isinstance(rate, (int, float)) else "speed not recorded"
    return text + (" (each with its mirror)" if "top1_by_tta" in ev else "")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return "—" if value is None else str(value)


def _table(header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_fmt(c) if not isinstance(c, str) else c for c in row) + " |" for row in rows]
    return "\n".join(lines)


TEMPLATE = Path(__file__).with_name("card_template.md")


def _onnx_items(facts: CardFacts) -> list[dict[str, str]]:
    items = []
    for file_name, report in facts.onnx_reports.items():
        rows = [(c.get("inputs"), c.get("num_images"), c.get("max_abs_diff"), c.get("agreement"),
                 c.get("onnx_top1"), c.get("torch_top1")) for c in report.get("comparisons", [])]
        table = _table(("inputs", "images", "max |logit diff|", "top-1 agreement (%)", "file top-1 (%)",
                        "PyTorch top-1 (%)"), rows) if rows else ""
        ran, verdict = report.get("ran", True), "passed" if report.get("passed") else "FAILED"
        items.append({"file": file_name, "precision": report.get("precision", "?"), "format": report.get("format", "onnx"),
                      "provider": report.get("provider", "?"), "ran": ran, "table": table,
                      "verdict": verdict})
    return items


def _runtimes_table(matrix: dict[str, Any] | None) -> str:
    """The runtime matrix (a row per runtime, a column per precision) from ``runtimes.json``."""
    if not matrix or not matrix.get("cells"):
        return ""
    precisions = list(dict.fromkeys(c["precision"] for c in matrix["cells"]))
    rows: dict[str, dict[str, dict[str, Any]]] = {}
    for c in matrix["cells"]:
        rows.setdefault(c["runtime"], {})[c["precision"]] = c

    def text(c: dict[str, Any] | None) -> str:
        if c is None or c.get("agreement") is None:
            shown = "fails to load" if c is not None and str(c.get("note", "")).startswith("fails") else "not run"
        else:
            shown = f"{c['agreement']:.1f} %, {c['max_abs_diff']:.2g}"
        return shown if c is None or c.get("declared_valid", True) else f"{shown} (not validated)"

    body = []
    for key, cells in rows.items():
        if all(c.get("version") is None for c in cells.values()):
            continue  # a runtime that did not run here (no GPU, not installable) is left out
        version = next(c["version"] for c in cells.values() if c.get("version"))
        body.append((key, version, *[text(cells.get(p)) for p in precisions]))
    return _table(("runtime", "version", *[f"{p}: agreement, max abs logit diff" for p in precisions]), body)


def _context(facts: CardFacts) -> dict[str, Any]:
    """Every value the card template shows, formatted; the prose lives in card_template.md."""
    s, meta, ev = facts.spec, facts.weights or {}, facts.eval
    recipe = facts.recipe
    training_facts = [
        ("epochs", meta.get("epochs")), ("seed", meta.get("seed")),
        ("hardware", meta.get("train_device")), ("processes (world size)", meta.get("world_size")),
        ("EMA weights", meta.get("ema")), ("validation split", meta.get("val_split")),
        ("wall time (s)", meta.get("wall_time_s")), ("training throughput (images/s)", meta.get("train_images_per_s")),
        ("PyTorch", meta.get("torch_version")), ("aperture_zoo", meta.get("package_version")),
    ]
    per_class = (ev or {}).get("per_class_top1") or {}
    record = find_weights(s.name)
    return {
        "name": s.name, "report": REPORT, "dataset_label": _dataset(meta)[1], "repo_id": facts.repo_id, "trained": facts.trained,
        "has_weights": facts.weights is not None, "sha256": facts.weights_sha256,
        "article": "An" if str(s.depth).startswith(("8", "11", "18")) else "A", "depth": s.depth,
        "arch_table": _table(("N (stages)", "B (blocks per stage)", "C (channels)", "F", "K", "P"),
                             [(s.num_stages, str(tuple(s.blocks)), str(tuple(s.channels)), s.conv_kernel,
                               s.shortcut_kernel, s.pool_kernel)]),
        "params": f"{facts.params:,}", "report_params": _fmt(s.report_params),
        "params_match": "matches" if facts.params == s.report_params else "DIFFERS from",
        "flops": f"{facts.flops:,}", "macs": f"{facts.flops // 2:,}",
        "input_size": " x ".join(map(str, s.input_size)), "mean": list(s.mean), "std": list(s.std),
        "num_classes": s.num_classes, "classes": ", ".join(s.label_names),
        "recipe_table": _table(("setting", "value"), [(k, _fmt(recipe[k])) for k in sorted(recipe)]) if recipe else "",
        "facts_table": _table(("fact", "value"), [(k, _fmt(v)) for k, v in training_facts if v is not None]),
        "subset": _fmt(meta["subset"]) if meta.get("subset") else None,
        "top1": f"{meta['test_top1']:.2f}" if facts.trained else None, "epochs": _fmt(meta.get("epochs")),
        "test_subset": _fmt(meta["test_subset"]) if meta.get("test_subset") else None,
        "test_loss": f"{meta['test_loss']:.4f}" if meta.get("test_loss") is not None else None,
        "report_top1": f"{s.report_top1_20ep:.2f}" if s.report_top1_20ep is not None else None,
        "eval_line": (f"{ev['top1']:.2f}% on {_fmt(ev.get('num_images'))} images on "
                      f"{ev.get('device', 'unknown device')}, {_speed(ev)}") if ev else None,
        "per_class_table": _table(("class", "top-1 (%)"), [(c, "—" if v is None else f"{v:.2f}")
                                                          for c, v in per_class.items()]) if per_class else "",
        "onnx": _onnx_items(facts), "mixup": facts.uses_mixup, **_robustness_context(ev),
        "runtimes_table": _runtimes_table(facts.runtimes),
        "runtimes_images": (facts.runtimes or {}).get("images"), "runtimes_batch": (facts.runtimes or {}).get("batch"),
        # the usage snippet loads the published weights only when these are them
        "published": facts.weights_sha256 is not None and record is not None and facts.weights_sha256 == record.sha256,
        "has_temperature": meta.get("temperature") is not None or (
            record is not None and record.temperature is not None and facts.weights_sha256 == record.sha256),
    }


def _robustness_context(ev: dict[str, Any] | None) -> dict[str, Any]:
    """Calibration / flip-TTA / corruption lines for the card, from ``eval.json`` (None when absent)."""
    ev = ev or {}
    out: dict[str, Any] = {"calibration": None, "tta_line": None, "corruption": None}
    n = _fmt(ev.get("calibration_num_images", ev.get("num_images")))
    if ev.get("calibration_num_images", ev.get("num_images")) != ev.get("num_images"):
        n = f"a stratified {n} of the {_fmt(ev.get('num_images'))}"
    if "ece" in ev and "ece_calibrated" in ev:  # an eval of too few images to fit a temperature has none
        out["calibration"] = {
            "temperature": f"{ev['temperature']:.4f}", "fitted_on": ev.get("temperature_fitted_on", "?"),
            "table": _table(("", "ECE (15 bins, %)", "NLL", "Brier"), [
                ("softmax(logits)", f"{100 * ev['ece']:.2f}", f"{ev['nll']:.4f}", f"{ev['brier']:.4f}"),
                (f"softmax(logits / {ev['temperature']:.4f})", f"{100 * ev['ece_calibrated']:.2f}",
                 f"{ev['nll_calibrated']:.4f}", f"{ev['brier_calibrated']:.4f}")]),
            "images": n, "tta": bool(ev.get("tta")),
        }
    if "top1_by_tta" in ev:
        t = ev["top1_by_tta"]
        out["tta_line"] = f"{t['flip']:.2f}% with flip test-time augmentation ({t['none']:.2f}% without; {n} images)"
        tc = ev.get("tta_calibration") or {}
        if tc.get("ece_calibrated") is not None:  # what an app using the --tta flip ONNX file gets
            out["tta_line"] += (f"; with the same temperature its ECE is {100 * tc['ece_calibrated']:.2f}% "
                                f"({100 * tc['ece']:.2f}% before)")
    corr = ev.get("corruptions")
    if corr and corr.get("mean") is not None:
        rows = [(name, *(f"{by[s]:.2f}" if s in by else "—" for s in ("1", "2", "3", "4", "5")),
                 f"{corr['per_corruption'][name]:.2f}") for name, by in corr["top1"].items()]
        sample = (f"a stratified sample of {corr['num_images']:,} test images (the same for every corruption and severity)"
                  if corr.get("stratified_sample") else f"{corr['num_images']:,} test images")
        out["corruption"] = {
            "mean": f"{corr['mean']:.2f}", "worst": corr["worst"], "worst_mean": f"{corr['worst_mean']:.2f}",
            "sample": sample, "table": _table(("corruption", "1", "2", "3", "4", "5", "mean"), rows),
        }
    return out


def render_card(facts: CardFacts) -> str:
    """The README.md model card for ``facts``: huggingface_hub's ModelCard on our Jinja template."""
    from huggingface_hub import ModelCard

    card = ModelCard.from_template(_card_data(facts), template_str=TEMPLATE.read_text(), **_context(facts))
    return str(card).rstrip("\n") + "\n"


def write_folder(
    name: str, out_dir: str | os.PathLike[str], weights: str | os.PathLike[str], *,
    onnx: str | os.PathLike[str] | None = None, repo_id: str | None = None,
) -> Path:
    """The one writer of what a Hub folder holds (huggingface_hub's ``save_pretrained``).

    ``weights`` as model.safetensors, the run outputs and ONNX reports found beside it, ``onnx``
    as model.onnx (with its report), then config.json and README.md describing exactly those files.
    ``aperture push`` writes one into a temporary folder and uploads it; ``aperture card --run``
    writes one where it is told.
    """
    from .weights import decode_metadata, read_metadata

    out, weights = Path(out_dir), Path(weights)
    # Everything is checked before the first copy, so a refused folder leaves nothing behind.
    arch = decode_metadata(read_metadata(weights)).get("arch")
    if arch and arch != name:
        raise CardError(f"{weights} holds weights for {arch}, not {name}; write the card with "
                        f"`aperture card {arch} --run {weights.parent}`")
    _refuse_replacing_published(name, out / WEIGHTS_FILENAME, weights)
    out.mkdir(parents=True, exist_ok=True)
    extras = [*RUN_FILES, *(p.name for p in weights.parent.glob("*" + REPORT_SUFFIX))]
    copies = {WEIGHTS_FILENAME: weights, **{extra: weights.parent / extra for extra in extras}}
    if onnx is not None:
        onnx = Path(onnx)
        copies[ONNX_FILENAME] = onnx
        copies[Path(ONNX_FILENAME).stem + REPORT_SUFFIX] = onnx.with_suffix(REPORT_SUFFIX)
    for target, src in copies.items():
        if src.is_file() and src.resolve() != (out / target).resolve():
            with atomic_path(out / target) as tmp:
                shutil.copyfile(src, tmp)
    return write_card(name, out, weights=out / WEIGHTS_FILENAME, repo_id=repo_id)


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
    if run_dir is not None:
        run = Path(run_dir)
        if not (run / WEIGHTS_FILENAME).is_file():
            raise CardError(f"run dir {run} has no {WEIGHTS_FILENAME}; pass the folder a training run wrote")
        return write_folder(name, out, run / WEIGHTS_FILENAME, repo_id=repo_id)
    out.mkdir(parents=True, exist_ok=True)
    facts = gather(name, out, Path(weights) if weights is not None else None, repo_id)
    if facts.weights is not None and (out / WEIGHTS_FILENAME).is_file():
        record = {"sha256": facts.weights_sha256, "size": facts.weights_size, "metadata": facts.weights}
        atomic_write_text(out / PROVENANCE_FILENAME, json.dumps(record, indent=2, sort_keys=True) + "\n")
    atomic_write_text(out / CONFIG_FILENAME, json.dumps(build_config(facts), indent=2, sort_keys=True) + "\n")
    atomic_write_text(out / CARD_FILENAME, render_card(facts))
    return out


def _refuse_replacing_published(name: str, current: Path, new: Path) -> None:
    """A run's card must never overwrite the zoo's published (pinned) weights of ``name``."""
    from .files import file_sha256

    record = find_weights(name)
    pin = record.sha256 if record else None
    if pin and current.is_file() and file_sha256(current) == pin and file_sha256(new) != pin:
        raise CardError(
            f"{current.parent} holds the published {name} weights (SHA-256 pinned in the registry); "
            f"a card for your run would replace them. Write it elsewhere with --out DIR"
        )


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
            shutil.copytree(folder, copy, ignore=shutil.ignore_patterns(*generated))
        write_card(name, copy)
        return [f for f in generated
                if not (folder / f).is_file() or (folder / f).read_bytes() != (copy / f).read_bytes()]
