"""The model card's README.md text: Hub metadata and the Jinja template filled from ``CardFacts``.

Text from outside (class names, dataset and file names, devices, recipe values: whatever a weights
file, report or eval.json holds) goes through :func:`escape_md` before it reaches the Markdown: HTML
in a class name is shown, not rendered, and a ``|`` does not break a table.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .card_facts import CardFacts
from .catalog import find_weights
from .registry import REPORT

LICENSE_ID = "mit"
# Inline Markdown and HTML syntax characters; every other character is literal text inside a line.
_MD_SPECIAL = frozenset("\\`*_[]|#$~^")
_HTML = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}


def escape_md(text: object) -> str:
    """``text`` as literal inline Markdown, also inside a table cell.

    Characters that are not printable (newlines, escape sequences) are shown as ``\\n``, ``\\x1b``
    (one line, nothing for a terminal or renderer to act on); HTML's ``& < >`` become entities, and
    Markdown's inline syntax characters (``|`` included, which would split a table cell) are
    backslash-escaped. A renderer shows exactly the visible text back.
    """
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))
    out = []
    for i, c in enumerate(shown):
        intraword = c == "_" and 0 < i < len(shown) - 1 and shown[i - 1].isalnum() and shown[i + 1].isalnum()
        out.append(_HTML.get(c) or (f"\\{c}" if c in _MD_SPECIAL and not intraword else c))  # snake_case stays
    return "".join(out)


def _card_data(facts: CardFacts) -> Any:
    """The card's YAML front matter (Hub metadata, model-index with the final-epoch accuracy)."""
    from huggingface_hub import EvalResult, ModelCardData

    from .terminal import fragment

    key, label = dataset_of(facts.weights or {})
    label = fragment(label)  # the YAML front matter too: control and bidi characters shown, not sent
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
        license=LICENSE_ID, library_name="aperture_zoo", tags=tags,
        datasets=[key] if key in ("cifar10", "cifar100") else None,
        metrics=["accuracy"], pipeline_tag="image-classification", model_name=facts.spec.name,
        eval_results=results,
    )
    return data


def dataset_of(meta: dict[str, Any]) -> tuple[str, str]:
    """(key, name) of the dataset the weights were trained on: cifar10, cifar100, or an image folder."""
    if not isinstance(meta.get("dataset"), str) and "converted_from_sha256" in meta:  # a pickle records no data
        return "unknown", "unknown dataset"
    name = meta.get("dataset") if isinstance(meta.get("dataset"), str) else "cifar10"
    if name in ("cifar10", "cifar100"):
        return name, {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}[name]
    folder = name.removeprefix("folder:") if name.startswith("folder:") else Path(name).name  # older files: a path
    return "image-folder", f"{folder} image folder"  # raw text: the YAML takes it as data


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
    """A Markdown table; every cell (values from files, and the header) escaped by ``escape_md``."""
    lines = ["| " + " | ".join(map(escape_md, header)) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(escape_md(_fmt(c) if not isinstance(c, str) else c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


TEMPLATE = Path(__file__).with_name("card_template.md")


def _onnx_items(facts: CardFacts) -> list[dict[str, Any]]:
    """Each exported file's report (every format; Core ML's says it was checked, not run) for the card."""
    items = []
    for file_name, report in facts.onnx_reports.items():
        rows = [(c.get("inputs"), c.get("num_images"), c.get("max_abs_diff"), c.get("agreement"),
                 c.get("onnx_top1"), c.get("torch_top1")) for c in report.get("comparisons", [])]
        table = _table(("inputs", "images", "max |logit diff|", "top-1 agreement (%)", "file top-1 (%)",
                        "PyTorch top-1 (%)"), rows) if rows else ""
        items.append({"file": escape_md(file_name), "precision": escape_md(report.get("precision", "?")),
                      "format": escape_md(report.get("format", "onnx")), "ran": report.get("ran", True) is not False,
                      "provider": escape_md(report.get("provider", "?")), "sha256": _hex(report.get("onnx_sha256")),
                      "verdict": "passed" if report.get("passed") else "FAILED", "table": table,
                      "absent": file_name not in facts.files})  # a report whose file this folder does not hold
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
        ("converted from", _converted_line(meta)), ("started from", _init_line(meta.get("init"))), ("backbone frozen", meta.get("freeze_backbone")),
        ("epochs", meta.get("epochs")), ("seed", meta.get("seed")),
        ("hardware", meta.get("train_device")), ("processes (world size)", meta.get("world_size")),
        ("EMA weights", meta.get("ema")), ("validation split", meta.get("val_split")),
        ("wall time (s)", meta.get("wall_time_s")), ("training throughput (images/s)", meta.get("train_images_per_s")),
        ("PyTorch", meta.get("torch_version")), ("aperture_zoo", meta.get("package_version")),
    ]
    per_class = (ev or {}).get("per_class_top1") or {}
    record = find_weights(s.name)
    published = facts.weights_sha256 is not None and record is not None and facts.weights_sha256 == record.sha256
    # what predict applies: a calibrator or temperature the weights (or, published, their record) carry, else none
    carried = meta.get("calibrator") is not None or meta.get("temperature") is not None or (
        published and record is not None and record.calibrator is not None)
    return {
        "name": s.name, "report": REPORT, "dataset_label": escape_md(dataset_of(meta)[1]), "repo_id": facts.repo_id, "trained": facts.trained,
        "builtin_data": dataset_of(meta)[0] == "cifar10",  # CIFAR-100 and folders: their own limitations lines
        "converted": _converted_text(meta), "has_weights": facts.weights is not None, "sha256": _hex(facts.weights_sha256),
        "article": "An" if str(s.depth).startswith(("8", "11", "18")) else "A", "depth": s.depth,
        "arch_table": _table(("N (stages)", "B (blocks per stage)", "C (channels)", "F", "K", "P"),
                             [(s.num_stages, str(tuple(s.blocks)), str(tuple(s.channels)), s.conv_kernel,
                               s.shortcut_kernel, s.pool_kernel)]),
        "params": f"{facts.params:,}", "report_params": _fmt(s.report_params), "report_params_known": s.report_params is not None,
        "params_match": "matches" if facts.params == s.report_params else "DIFFERS from",
        "flops": f"{facts.flops:,}", "macs": f"{facts.flops // 2:,}",
        "input_size": " x ".join(map(str, s.input_size)), "mean": list(s.mean), "std": list(s.std),
        "num_classes": s.num_classes, "classes": ", ".join(map(escape_md, s.label_names)),
        "recipe_table": _table(("setting", "value"), [(k, _fmt(recipe[k])) for k in sorted(recipe)]) if recipe else "",
        "facts_table": _table(("fact", "value"), [(k, _fmt(v)) for k, v in training_facts if v is not None]),
        "subset": escape_md(_fmt(meta["subset"])) if meta.get("subset") else None,
        "top1": f"{meta['test_top1']:.2f}" if facts.trained else None, "epochs": escape_md(_fmt(meta.get("epochs"))),
        "test_subset": escape_md(_fmt(meta["test_subset"])) if meta.get("test_subset") else None,
        "test_loss": f"{meta['test_loss']:.4f}" if meta.get("test_loss") is not None else None,
        "report_top1": f"{s.report_top1_20ep:.2f}" if s.report_top1_20ep is not None else None,
        "eval_line": escape_md(f"{ev['top1']:.2f}% on {_fmt(ev.get('num_images'))} images on "
                               f"{ev.get('device', 'unknown device')}, {_speed(ev)}") if ev else None,
        "other_eval_line": _other_eval_line(facts.other_eval),
        "per_class_table": _table(("class", "top-1 (%)"), [(c, "—" if v is None else f"{v:.2f}")
                                                          for c, v in per_class.items()]) if per_class else "",
        "onnx": _onnx_items(facts), "mixup": facts.uses_mixup, **_robustness_context(ev, carried),
        "runtimes_table": _runtimes_table(facts.runtimes),
        "runtimes_images": escape_md((facts.runtimes or {}).get("images")),
        "runtimes_batch": escape_md((facts.runtimes or {}).get("batch")),
        # the usage snippet loads the published weights only when these are them
        "published": published,
        "published_elsewhere": record is not None and not facts.weights,  # a folder without the weights that exist
        "published_tag": record.tag if record is not None else None,
        "export_ref": f"{s.name} --pretrained" if published or facts.weights is None else "model.safetensors",
        "onnx_file": facts.onnx_file,  # the file this folder holds, else the one `aperture export` writes
        "has_temperature": carried,
    }


def _other_eval_line(ev: dict[str, Any] | None) -> str | None:
    """An ``eval --unseen`` eval.json, labelled as what it is: other images, on the evaluator's word (its fields are
    anyone's text: checked, escaped)."""
    if ev is None:
        return None
    ts = ev["test_set"] if isinstance(ev.get("test_set"), dict) else {}
    top1, n, where = ev.get("top1"), ts.get("num_images"), ts.get("dataset")
    score = f"{top1:.2f}% top-1 on " if isinstance(top1, (int, float)) and math.isfinite(top1) else ""
    images = f"{n:,} images" if type(n) is int else "the images"
    from .unseen import DECLARED_CHECKED

    checked = ("checked image by image against the run's training files by their bytes; a re-encoded copy of a "
               "training image would not be found" if ts.get("declared") == DECLARED_CHECKED else
               "not checked image by image; nothing shows these weights never trained on them")
    return (f"{score}{images} of {escape_md(where) if isinstance(where, str) else 'a folder'}, declared unseen by whoever "
            f"ran `aperture eval --unseen` ({checked})")


def _robustness_context(ev: dict[str, Any] | None, carried: bool = True) -> dict[str, Any]:
    """Calibration / flip-TTA / corruption lines for the card, from ``eval.json`` (None when absent).

    ``carried``: the weights carry a calibrator or temperature; without one, what eval fitted is shown as a
    measured alternative, never as what ``predict`` applies."""
    ev = ev or {}
    out: dict[str, Any] = {"calibration": None, "tta_line": None, "corruption": None}
    n = _fmt(ev.get("calibration_num_images", ev.get("num_images")))
    if ev.get("calibration_num_images", ev.get("num_images")) != ev.get("num_images"):
        n = f"a stratified {n} of the {_fmt(ev.get('num_images'))}"
    n = escape_md(n)
    if "ece" in ev and "calibrator" in ev:
        from .card_calibration import calibration_context

        out["calibration"] = calibration_context(ev, n, escape_md, carried)
    elif "ece" in ev and "ece_calibrated" in ev:  # an eval.json from before calibrators: one temperature
        out["calibration"] = {
            "temperature": f"{ev['temperature']:.4f}", "fitted_on": escape_md(ev.get("temperature_fitted_on", "?")),
            "table": _table(("", "ECE (15 bins, %)", "NLL", "Brier"), [
                ("softmax(logits)", f"{100 * ev['ece']:.2f}", f"{ev['nll']:.4f}", f"{ev['brier']:.4f}"),
                (f"softmax(logits / {ev['temperature']:.4f})", f"{100 * ev['ece_calibrated']:.2f}",
                 f"{ev['nll_calibrated']:.4f}", f"{ev['brier_calibrated']:.4f}")]),
            "images": n, "tta": bool(ev.get("tta")), "carried": carried,
        }
    if "top1_by_tta" in ev:
        t = ev["top1_by_tta"]
        out["tta_line"] = f"{t['flip']:.2f}% with flip test-time augmentation ({t['none']:.2f}% without; {n} images)"
        tc = ev.get("tta_calibration") or {}
        if tc.get("ece_calibrated") is not None and "calibrator" not in tc:  # before calibrators
            out["tta_line"] += (f"; with the same temperature its ECE is {100 * tc['ece_calibrated']:.2f}% "
                                f"({100 * tc['ece']:.2f}% before)")
    corr = ev.get("corruptions")
    if corr and corr.get("mean") is not None:
        rows = [(name, *(f"{by[s]:.2f}" if s in by else "—" for s in ("1", "2", "3", "4", "5")),
                 f"{corr['per_corruption'][name]:.2f}") for name, by in corr["top1"].items()]
        sample = (f"a stratified sample of {corr['num_images']:,} test images (the same for every corruption and severity)"
                  if corr.get("stratified_sample") else f"{corr['num_images']:,} test images")
        out["corruption"] = {
            "mean": f"{corr['mean']:.2f}", "worst": escape_md(corr["worst"]), "worst_mean": f"{corr['worst_mean']:.2f}",
            "sample": sample, "table": _table(("corruption", "1", "2", "3", "4", "5", "mean"), rows),
        }
    return out


def render_card(facts: CardFacts) -> str:
    """The README.md model card for ``facts``: huggingface_hub's ModelCard on our Jinja template."""
    from huggingface_hub import ModelCard

    card = ModelCard.from_template(_card_data(facts), template_str=TEMPLATE.read_text(), **_context(facts))
    return str(card).rstrip("\n") + "\n"


def _init_line(init: object) -> str | None:
    """A fine-tune's starting weights, by name and SHA-256 (what a reader needs to find the same start)."""
    if not isinstance(init, dict):
        return None
    head = {"kept": "its head kept", "new": "a new head"}.get(str(init.get("head")), "")
    parts = [str(init.get("ref") or "weights"), f"SHA-256 {_hex(init.get('sha256')) or 'not recorded'}", head]
    return ", ".join(p for p in parts if p)


def _converted_line(meta: dict[str, Any]) -> str | None:
    """The PyTorch checkpoint converted weights came from, by name and SHA-256 (raw: the table escapes it)."""
    if "converted_from_sha256" not in meta:
        return None
    return f"PyTorch checkpoint {meta.get('converted_from')}, SHA-256 {_hex(meta['converted_from_sha256']) or 'not recorded'}"


def _converted_text(meta: dict[str, Any]) -> str | None:
    """The same for the card's prose: the name escaped, the SHA-256 in a code span (hex digits or nothing)."""
    if "converted_from_sha256" not in meta:
        return None
    sha = _hex(meta["converted_from_sha256"])
    return f"the PyTorch checkpoint {escape_md(meta.get('converted_from'))} " + (f"(SHA-256 `{sha}`)" if sha else "(SHA-256 not recorded)")


def _hex(sha: object) -> str | None:
    """A SHA-256 as the card prints it (inside a code span, where no escape works): hex digits or nothing."""
    text = str(sha) if sha is not None else ""
    return text if len(text) == 64 and all(c in "0123456789abcdef" for c in text) else None
