"""What a model card states, gathered from the files of its folder, every join checked.

Parameters and FLOPs come from ``summary.measure``, accuracy/recipe/hardware from the weights'
metadata, per-class accuracy from ``eval.json``, every exported file's parity from ``*.report.json``
(``resnet22.report.json`` for ONNX, ``resnet22.int8.pte.report.json`` for the other formats), the runtime
matrix from ``runtimes.json``. Each of those files is shown to belong to these weights by its
recorded SHA-256 (``provenance.check_folder``) before the card says anything it holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .catalog import DEFAULT_HUB_ORG, find_weights
from .errors import ApertureError
from .files import (EVAL_FILENAME, MODEL_SUFFIXES, ONNX_FILENAME, ONNX_SUFFIX, PROVENANCE_FILENAME, REPORT_SUFFIX,
                    RUNTIMES_FILENAME, WEIGHTS_FILENAME, read_json)
from .registry import ModelSpec, get_spec


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
    other_eval: dict[str, Any] | None = None  # an eval.json of other images (eval --unseen): never shown as the test set
    onnx_reports: dict[str, dict[str, Any]] = field(default_factory=dict)  # file name (any format) -> report
    runtimes: dict[str, Any] | None = None  # the runtime matrix, when measured
    has_onnx: bool = False
    onnx_file: str | None = None  # the fp32 ONNX model beside the card (model.onnx in a Hub repo): the usage names it
    files: frozenset[str] = frozenset()  # the names in the card's folder: a report's file may not be among them

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
    committed ``weights.json``), ``eval.json``, ``*.report.json`` and ``runtimes.json`` in ``source_dir``."""
    from .files import file_sha256
    from .summary import measure
    from .weights import decode_metadata, read_metadata, spec_from_metadata

    if repo_id is not None:  # it goes into the card's code sample, where no escape works: the Hub's own rules
        from .hub import check_repo_id

        check_repo_id(repo_id)
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
        if not (isinstance(facts.weights_sha256, str) and len(facts.weights_sha256) == 64
                and all(c in "0123456789abcdef" for c in facts.weights_sha256)):
            raise CardError(f"{source_dir / PROVENANCE_FILENAME} records no valid SHA-256 of its weights; regenerate "
                            "it from the weights file (aperture card NAME with model.safetensors beside it)")
    check_card_metadata(facts.weights, weights if weights.is_file() else source_dir / PROVENANCE_FILENAME)
    _check_recorded_figures(facts, weights if weights.is_file() else source_dir / PROVENANCE_FILENAME)
    _gather_derived(facts, name, source_dir)
    return facts


def _gather_derived(facts: CardFacts, name: str, source_dir: Path) -> None:
    """eval.json, the exported files' reports and the runtime matrix, each shown to be of these weights."""
    from .provenance import StaleFileError, check_folder

    if facts.weights_sha256 is None:
        derived = [*(p for suffix in MODEL_SUFFIXES for p in source_dir.glob("*" + suffix)),
                   *source_dir.glob("*" + REPORT_SUFFIX), source_dir / RUNTIMES_FILENAME, source_dir / EVAL_FILENAME]
        stray = next((p for p in derived if p.exists()), None)
        if stray is not None:  # files of some weights, in a card that describes none
            raise StaleFileError(f"{stray} describes trained weights, but {source_dir} holds no weights for the card "
                                 "to check it against; add the weights (model.safetensors), or remove it")
        return
    checked = check_folder(source_dir, facts.weights_sha256, name)
    facts.files = frozenset(p.name for p in source_dir.iterdir())
    facts.eval, facts.onnx_reports, facts.runtimes = checked.eval, checked.reports, checked.runtimes
    if isinstance(facts.eval, dict) and "test_set" in facts.eval:  # eval --unseen: the user's folder, not the split
        facts.other_eval, facts.eval = facts.eval, None
    facts.has_onnx = any(f.endswith(ONNX_SUFFIX) for f in checked.reports) or bool(checked.onnx_files)
    facts.onnx_file = next((f for f in (ONNX_FILENAME, name + ONNX_SUFFIX) if f in checked.onnx_files), None)


# Every metadata field a card or its config.json reads, with what it must be (None: not recorded). Any Hub repo
# writes these, so each is checked before use: a wrong type is a one-line refusal, never a traceback.
# test_top1 (and dataset against the head) are checked, range included, by _check_recorded_figures.
_NUMBER, _COUNT, _TEXT = "a finite number", "a whole number", "text"
CARD_FIELDS: dict[str, str] = {
    "test_loss": _NUMBER, "wall_time_s": _NUMBER, "train_images_per_s": _NUMBER,
    "val_split": _NUMBER, "temperature": _NUMBER, "epochs": _COUNT, "seed": _COUNT, "world_size": _COUNT,
    "subset": _COUNT, "test_subset": _COUNT, "ema": "true or false", "train_device": _TEXT, "torch_version": _TEXT,
    "package_version": _TEXT, "dataset": _TEXT, "arch": _TEXT, "recipe": "an object of settings",
    "metrics_sha256": _TEXT, "converted_from": _TEXT, "converted_from_sha256": _TEXT,
}


def _fits(value: Any, kind: str) -> bool:
    import math

    if kind == _NUMBER:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if kind == _COUNT:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == _TEXT:
        return isinstance(value, str)
    if kind == "true or false":
        return isinstance(value, bool)
    return isinstance(value, dict) and _fits(value.get("mixup_alpha", 0) or 0, _NUMBER)


def check_card_metadata(meta: dict[str, Any] | None, where: Path) -> None:
    """Refuse (one ``CardError`` line) weights metadata whose fields a card reads hold the wrong type."""
    from .terminal import shown

    if meta is None:
        return
    if not isinstance(meta, dict):
        raise CardError(f"{where} records metadata that is not an object; save the weights again with save_weights")
    for key, kind in CARD_FIELDS.items():
        value = meta.get(key)
        if value is not None and not _fits(value, kind):
            raise CardError(f"{where} records {key}={shown(repr(value)[:60])}, not {kind}: its metadata is damaged or "
                            "was edited; save the weights again with save_weights (or fix that field)")


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
