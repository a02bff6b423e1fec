"""Model cards (README.md with Hub metadata) and timm-style config.json, generated from facts.

Every number comes from a measurement or a run output: parameters and FLOPs from
``summary.measure``, accuracy/recipe/hardware from the weights' metadata, per-class accuracy from
``eval.json``, ONNX parity from ``*.report.json``. Nothing is typed by hand, and a model without
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
from .files import CARD_FILENAME, CONFIG_FILENAME, RUN_FILES, WEIGHTS_FILENAME, atomic_write_text
from .registry import REPORT, ModelSpec, get_spec

PROVENANCE_FILENAME = "weights.json"  # small committed record of the weights a card describes
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
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CardError(f"{path} is not readable JSON ({exc}); regenerate it") from None


def gather(name: str, source_dir: Path, weights: Path | None = None, repo_id: str | None = None) -> CardFacts:
    """Facts for ``name`` from ``weights`` (else ``source_dir/model.safetensors``, else the
    committed ``weights.json``), ``eval.json`` and ``*.report.json`` in ``source_dir``."""
    from .summary import measure
    from .weights import decode_metadata, file_sha256, read_metadata

    spec = get_spec(name)
    measured = measure(name)
    record = find_weights(name)
    facts = CardFacts(spec, measured["params"], measured["flops"],
                      repo_id or (record and record.hub_repo) or f"{DEFAULT_HUB_ORG}/{name}")
    # The default org is fixed here, not read from $APERTURE_HUB_ORG: cards must not depend on the
    # environment they are generated in.
    weights = weights or (source_dir / WEIGHTS_FILENAME)
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
    if (source_dir / "eval.json").is_file():
        facts.eval = _read_json(source_dir / "eval.json")
    for report in sorted(source_dir.glob("*.report.json")):
        facts.onnx_reports[report.name.removesuffix(".report.json") + ".onnx"] = _read_json(report)
    facts.has_onnx = bool(facts.onnx_reports) or any(source_dir.glob("*.onnx"))
    return facts


# -- config.json ---------------------------------------------------------------------------------
def build_config(facts: CardFacts) -> dict[str, Any]:
    """timm-style config.json: architecture, model args, preprocessing, labels, metrics, recipe."""
    from . import __version__

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
        config["metrics"] = {"dataset": "cifar10", "split": "test", "top1": meta["test_top1"],
                             "test_loss": meta.get("test_loss"), "epoch": meta.get("epochs")}
        if facts.eval:
            config["metrics"]["per_class_top1"] = facts.eval.get("per_class_top1")
    return config


# -- README.md -----------------------------------------------------------------------------------
def _front_matter(facts: CardFacts) -> str:
    from huggingface_hub import EvalResult, ModelCardData

    tags = ["image-classification", "cifar10", "resnet", "pytorch", "safetensors", "aperture_zoo"]
    if facts.has_onnx:
        tags.append("onnx")
    results = None
    if facts.trained:
        results = [EvalResult(
            task_type="image-classification", task_name="Image Classification",
            dataset_type="cifar10", dataset_name="CIFAR-10", dataset_split="test",
            metric_type="accuracy", metric_name="Top-1 accuracy (final epoch)",
            metric_value=round(float(facts.weights["test_top1"]), 2),
        )]
    data = ModelCardData(
        license=LICENSE, library_name="aperture_zoo", tags=tags, datasets=["cifar10"],
        metrics=["accuracy"], pipeline_tag="image-classification", model_name=facts.spec.name,
        eval_results=results,
    )
    return f"---\n{data.to_yaml()}\n---\n"


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


def _architecture(facts: CardFacts) -> str:
    s = facts.spec
    match = "matches" if facts.params == s.report_params else "DIFFERS from"
    rows = [(s.num_stages, str(tuple(s.blocks)), str(tuple(s.channels)), s.conv_kernel,
             s.shortcut_kernel, s.pool_kernel)]
    return "\n".join([
        "## Architecture", "",
        f"{'An' if str(s.depth).startswith(('8', '11', '18')) else 'A'} {s.depth}-layer ResNet in the report's notation: N residual stages of B_i basic blocks "
        f"with C_i channels, F x F block convolutions, K x K projection shortcuts and a P x P "
        "average pool before the linear head.", "",
        _table(("N (stages)", "B (blocks per stage)", "C (channels)", "F", "K", "P"), rows), "",
        f"- Parameters: **{facts.params:,}** (measured on the built model; it {match} the report's "
        f"Table 1 count of {_fmt(s.report_params)})",
        f"- FLOPs per 32x32 image: {facts.flops:,} ({facts.flops // 2:,} multiply-accumulates, "
        "counted by torch.utils.flop_counter)",
        f"- Input: normalised float tensor N x {' x '.join(map(str, s.input_size))}; "
        f"mean {list(s.mean)}, std {list(s.std)} (on 0-1 pixels)",
        f"- Classes ({s.num_classes}): {', '.join(s.label_names)}",
    ])


def _training(facts: CardFacts) -> str:
    meta = facts.weights or {}
    lines = ["## Training", ""]
    recipe = facts.recipe
    if recipe:
        lines += [_table(("setting", "value"), [(k, _fmt(recipe[k])) for k in sorted(recipe)]), ""]
    facts_rows = [
        ("epochs", meta.get("epochs")), ("seed", meta.get("seed")),
        ("hardware", meta.get("train_device")), ("processes (world size)", meta.get("world_size")),
        ("EMA weights", meta.get("ema")), ("validation split", meta.get("val_split")), ("wall time (s)", meta.get("wall_time_s")),
        ("training throughput (images/s)", meta.get("train_images_per_s")),
        ("PyTorch", meta.get("torch_version")), ("aperture_zoo", meta.get("package_version")),
    ]
    lines.append(_table(("fact", "value"), [(k, _fmt(v)) for k, v in facts_rows if v is not None]))
    if meta.get("subset"):
        lines += ["", f"**Trained on a subset of the training set ({_fmt(meta['subset'])} images)**: "
                      "not comparable with full-data results."]
    return "\n".join(lines)


def _results(facts: CardFacts) -> str:
    meta, ev = facts.weights or {}, facts.eval
    lines = ["## Results on the CIFAR-10 test set", "",
             f"- Final-epoch top-1 accuracy: **{meta['test_top1']:.2f}%** (epoch {_fmt(meta.get('epochs'))}, "
             "the last epoch, not the best one)"]
    if meta.get("test_subset"):
        lines.append(f"- **Measured on a subset of the test set ({_fmt(meta['test_subset'])} images)**, "
                     "not the full 10,000")
    if meta.get("test_loss") is not None:
        lines.append(f"- Final-epoch test loss: {meta['test_loss']:.4f}")
    if facts.spec.report_top1_20ep is not None:
        lines.append(f"- The report's Table 1 (20 epochs): {facts.spec.report_top1_20ep:.2f}%")
    if ev:
        lines.append(f"- Re-evaluation (`eval.json`): {ev['top1']:.2f}% on {_fmt(ev.get('num_images'))} "
                     f"images on {ev.get('device', 'unknown device')}, "
                     f"{_fmt(ev.get('images_per_s'))} images/s")
        per_class = ev.get("per_class_top1") or {}
        if per_class:
            lines += ["", "Per-class accuracy:", "",
                      _table(("class", "top-1 (%)"), [(c, f"{per_class[c]:.2f}") for c in per_class])]
    else:
        lines.append("- Per-class accuracy: not available (no `eval.json`; run `aperture eval` and "
                     "regenerate the card)")
    return "\n".join(lines)


def _onnx(facts: CardFacts) -> str:
    lines = ["## ONNX parity", ""]
    for file_name, report in facts.onnx_reports.items():
        verdict = "passed" if report.get("passed") else "FAILED"
        lines.append(f"`{file_name}` ({report.get('precision', '?')}, provider "
                     f"{report.get('provider', '?')}): validation {verdict} against PyTorch.")
        rows = [(c.get("inputs"), c.get("num_images"), c.get("max_abs_diff"), c.get("agreement"),
                 c.get("onnx_top1"), c.get("torch_top1")) for c in report.get("comparisons", [])]
        if rows:
            lines += ["", _table(("inputs", "images", "max |logit diff|", "top-1 agreement (%)",
                                  "ONNX top-1 (%)", "PyTorch top-1 (%)"), rows)]
        lines.append("")
    return "\n".join(lines).rstrip()


def _usage(facts: CardFacts) -> str:
    name, repo = facts.spec.name, facts.repo_id
    return "\n".join([
        "## Usage", "", "PyTorch:", "", "```python", "import torch", "import aperture_zoo", "",
        f'model = aperture_zoo.load("{name}", pretrained=True)  # or load("hf-hub:{repo}", pretrained=True)',
        'x = aperture_zoo.preprocess(["cat.png"], model)  # RGB, 32x32 (bilinear), normalised',
        "with torch.no_grad():",
        "    probs = model(x).softmax(-1)",
        "print(model.spec.label_names[probs.argmax().item()])",
        "```", "",
        f'torch.hub: `torch.hub.load("<owner>/aperture_zoo", "{name}", pretrained=True)`.', "",
        f"onnxruntime, no PyTorch (`aperture export {name} --pretrained --onnx` writes `{name}.onnx`; "
        "it takes pixels in [0, 1] and normalises inside the graph):", "",
        "```python", "from aperture_zoo.export.predict import OnnxClassifier", "",
        f'clf = OnnxClassifier("{name}.onnx")',
        'print(clf.predict("cat.png", top_k=3)[0].top)  # the same image rule as preprocess()',
        "```",
    ])


def _limitations(facts: CardFacts) -> str:
    lines = ["## Limitations", ""]
    if facts.trained:
        lines += ["- Trained and evaluated on CIFAR-10 only: 32x32 RGB images of 10 classes. It is not a "
                  "general image classifier and its accuracy on other data is unknown.",
                  "- Accuracy is measured on the CIFAR-10 test set; no robustness, calibration or "
                  "fairness evaluation was done."]
    else:
        lines += ["- No trained, evaluated weights exist for this card yet, so nothing about the "
                  "model's accuracy is known; untrained weights predict at chance level.",
                  "- The architecture is designed for CIFAR-10 (32x32 RGB images of 10 classes); it is "
                  "not a general image classifier."]
    lines.append("- The model expects normalised input (see Architecture); raw 0-255 pixels give "
                 "meaningless predictions.")
    return "\n".join(lines)


def _citations(facts: CardFacts) -> str:
    entries = [
        "@misc{sudrik_residual_design,\n  title  = {Residual Network Design Mini-Project},\n"
        "  author = {Sudrik and Nagula and Oza},\n  note   = {Compact CIFAR-10 ResNets under 5M parameters}\n}",
        "@inproceedings{he2016deep,\n  title     = {Deep Residual Learning for Image Recognition},\n"
        "  author    = {He, Kaiming and Zhang, Xiangyu and Ren, Shaoqing and Sun, Jian},\n"
        "  booktitle = {CVPR},\n  year      = {2016},\n  note      = {arXiv:1512.03385 (2015)}\n}",
    ]
    if facts.uses_mixup:
        entries.append(
            "@inproceedings{zhang2018mixup,\n  title     = {mixup: Beyond Empirical Risk Minimization},\n"
            "  author    = {Zhang, Hongyi and Cisse, Moustapha and Dauphin, Yann N. and Lopez-Paz, David},\n"
            "  booktitle = {ICLR},\n  year      = {2018}\n}")
    return "## Citation\n\n```bibtex\n" + "\n\n".join(entries) + "\n```"


def render_card(facts: CardFacts) -> str:
    """The README.md model card for ``facts``."""
    s = facts.spec
    intro = [
        f"# {s.name}: a compact CIFAR-10 ResNet", "",
        f"`{s.name}` is one of the six residual networks of the report *{REPORT}*, designed to "
        f"classify CIFAR-10 images with fewer than 5 million parameters. It is part of "
        "aperture_zoo and loads as a plain `torch.nn.Module` with torchvision's "
        "ResNet key layout.", "",
    ]
    if facts.trained:
        sha = facts.weights_sha256
        intro.append(f"Weights: `model.safetensors` (SHA-256 `{sha}`), trained with aperture_zoo; "
                     "the figures below are read from its metadata and run outputs.")
    elif facts.weights is not None:
        intro.append(f"**These weights (`model.safetensors`, SHA-256 `{facts.weights_sha256}`) carry "
                     "no test accuracy in their metadata: they are untrained or were never evaluated.** "
                     "This card makes no accuracy claim. Train the model with "
                     f"`aperture train {s.name}` and regenerate the card with "
                     f"`aperture card {s.name} --run RUN_DIR`.")
    else:
        intro.append("**No trained weights are published for this model yet.** This card describes "
                     "the architecture only and makes no accuracy claim. Train it with "
                     f"`aperture train {s.name}` and regenerate the card with "
                     f"`aperture card {s.name} --run RUN_DIR`.")
    sections = [_front_matter(facts) + "\n".join(intro), _architecture(facts)]
    if facts.weights is not None:
        sections.append(_training(facts))
    if facts.trained:
        sections.append(_results(facts))
    if facts.onnx_reports:
        sections.append(_onnx(facts))
    sections += [_usage(facts), _limitations(facts), _citations(facts)]
    return "\n\n".join(sections) + "\n"


def write_card(
    name: str,
    out_dir: str | os.PathLike[str],
    *,
    weights: str | os.PathLike[str] | None = None,
    run_dir: str | os.PathLike[str] | None = None,
    repo_id: str | None = None,
) -> Path:
    """Write README.md and config.json for ``name`` into ``out_dir``.

    With ``run_dir`` the run's model.safetensors, metrics.jsonl, curves.png and eval.json are
    copied in first, so the card describes exactly the files that sit beside it.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if run_dir is not None:
        run = Path(run_dir)
        if not (run / WEIGHTS_FILENAME).is_file():
            raise CardError(f"run dir {run} has no {WEIGHTS_FILENAME}; pass the folder a training run wrote")
        _refuse_replacing_published(name, out / WEIGHTS_FILENAME, run / WEIGHTS_FILENAME)
        for file_name in (WEIGHTS_FILENAME, *RUN_FILES):
            src = run / file_name
            if src.is_file() and src.resolve() != (out / file_name).resolve():
                shutil.copyfile(src, out / file_name)
        weights = out / WEIGHTS_FILENAME
    facts = gather(name, out, Path(weights) if weights is not None else None, repo_id)
    if facts.weights is not None and (out / WEIGHTS_FILENAME).is_file():
        record = {"sha256": facts.weights_sha256, "size": facts.weights_size, "metadata": facts.weights}
        atomic_write_text(out / PROVENANCE_FILENAME, json.dumps(record, indent=2, sort_keys=True) + "\n")
    atomic_write_text(out / CONFIG_FILENAME, json.dumps(build_config(facts), indent=2, sort_keys=True) + "\n")
    atomic_write_text(out / CARD_FILENAME, render_card(facts))
    return out


def _refuse_replacing_published(name: str, current: Path, new: Path) -> None:
    """A run's card must never overwrite the zoo's published (pinned) weights of ``name``."""
    from .weights import file_sha256

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
