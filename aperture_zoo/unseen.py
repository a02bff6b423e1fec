"""``eval --unseen``: every image of a folder scored as a test image, on the user's word that the weights never
trained on any of them (new images collected after training: an independent test set).

Weights record the folder they were trained on by one hash of its content manifest, not file by file,
so from the weights alone the one check possible is that this folder is not that training folder as a
whole. When the weights sit in their run folder, its ``run.json`` lists every training file's SHA-256;
trusted only when its manifest hashes to the one the weights record, it lets every image be checked by
its bytes (a training image is refused; the run's held-out test images are fine). The rest is the
user's declaration, and every report of such an evaluation (eval.json's ``test_set``, the printed
lines, a card) says which check was made. Labels go by class NAME to the model's outputs, never by sorted position: a
folder holding only ``dog/`` and ``cat/`` scores a CIFAR-10 model's outputs 5 and 3.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .data import Split
from .datasets import BUILTIN, DatasetError, dataset_name, public_dataset
from .files import RUN_FILENAME
from .manifest import Manifest, ManifestError

UNSEEN_KIND = "unseen folder"  # eval.json's test_set.kind
DECLARED = "declared unseen (--unseen; not checked image by image)"
DECLARED_CHECKED = "declared unseen (--unseen; checked image by image against the run's training files)"


class UnseenError(DatasetError):
    """An ``--unseen`` folder that cannot be scored as declared; the message says what to pass instead."""


@dataclass
class UnseenSet:
    """The folder's images as test images of the model: its class names, labels as its output indices."""

    split: Split
    record: dict[str, Any]            # eval.json's "test_set" (the folder by name, never its path)
    report_lines: list[str]           # the data report: classes, skipped files, copies used once


def unseen_folder(
    dataset: str | os.PathLike[str] | None,
    metadata: dict[str, Any] | None,
    class_names: Sequence[str],
    say: Callable[[str], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
    weights_file: str | os.PathLike[str] | None = None,
) -> UnseenSet:
    """All images of ``dataset`` (``DIR/<class>/<image>``), decoded as training decodes them (the content-keyed
    cache, the image rule), labelled by name with the indices of ``class_names`` (the model's classes).

    ``metadata`` is the weights' (decoded): its recorded training-folder manifest is checked against the folder
    as a whole, and against each image when ``weights_file`` sits beside its run's ``run.json`` (``training_images``).
    """
    check_unseen_dataset(dataset)
    from .datareport import analyse
    from .folder import load_folder
    from .folderscan import given_test_dir, scan_folder

    name = dataset_name(dataset)
    test_dir = given_test_dir(name) if Path(name).is_dir() else None
    if test_dir is not None:
        raise UnseenError(f"{name!r} has train/ and {test_dir}/ subfolders, and --unseen scores every image of the folder "
                          f"as a test image; pass only the held-out ones: --dataset {str(Path(name) / test_dir)!r} --unseen")
    output_indices(scan_folder(name).classes, tuple(class_names), name)  # a class the model lacks: before decoding
    decoded = load_folder(name, say=say, progress=progress)
    report = analyse(decoded, split=False)  # copies in a class scored once, a picture filed under two refused
    scanned = decoded.scan.manifest()
    manifest = scanned.sha256
    record = metadata.get("data") if isinstance((metadata or {}).get("data"), dict) else {}
    trained_on = record.get("manifest_sha256") if isinstance(record.get("manifest_sha256"), str) else None
    if manifest == trained_on:
        raise UnseenError(f"{name!r} is the folder these weights were trained on (its manifest {manifest[:12]} is the one "
                          "they record), so its images are training images; drop --unseen to score its held-out split")
    training = training_images(weights_file, trained_on)
    if training is not None:
        refuse_training_images(name, scanned, training)
    lut = output_indices(decoded.scan.classes, tuple(class_names), name)
    keep = report.keep if report.keep is not None else np.ones(len(decoded.labels), bool)
    labels = lut[decoded.labels[keep]]
    images = decoded.images[keep]
    checked = (f"image by image: none of its images is one of the {len(training):,} training images (by the SHA-256 of "
               "its bytes) that the run's run.json lists, whose manifest is the one these weights record"
               if training is not None else
               "only that it is not, as a whole, the folder these weights were trained on (they record that folder "
               "by one hash of its content, not image by image; no run.json of theirs lies beside them)"
               if trained_on is not None else "nothing: these weights record no training folder to compare with")
    test_set = {"kind": UNSEEN_KIND, "dataset": public_dataset(name), "manifest_sha256": manifest,
                "num_images": int(len(labels)), "folder_images": int(len(labels)),
                "classes": {c: int((labels == lut[i]).sum()) for i, c in enumerate(decoded.scan.classes)},
                "declared": DECLARED if training is None else DECLARED_CHECKED, "checked": checked}
    return UnseenSet(Split(images, labels.astype(np.int64), tuple(class_names)), test_set, report.lines())


def training_images(weights_file: str | os.PathLike[str] | None, trained_on: str | None) -> set[str] | None:
    """The SHA-256 of every image the weights' run trained on (its held-out test images left out), from the
    ``run.json`` beside ``weights_file``; None when there is none to trust: a run.json is believed only when its
    manifest hashes to ``trained_on``, the one the weights record (a neighbour's name proves nothing)."""
    path = Path(weights_file).parent / RUN_FILENAME if weights_file is not None and trained_on else None
    try:
        data = json.loads(path.read_text(encoding="utf-8")).get("data") if path is not None else None
        manifest = Manifest.from_record(data.get("manifest"), str(path))
    except (OSError, ValueError, AttributeError, ManifestError):
        return None
    split = data.get("split") if isinstance(data.get("split"), dict) else {}
    held_out = set(split.get("test", [])) if isinstance(split.get("test", []), list) else set()
    if manifest.sha256 != trained_on or not held_out <= {p for p, _, _ in manifest.files}:
        return None
    return {h for p, _, h in manifest.files if h and p not in held_out}


def refuse_training_images(name: str, scanned: Manifest, training: set[str]) -> None:
    """An unseen folder holding any training image (by its bytes) is refused, naming how many and the first two."""
    seen = [p for p, _, h in scanned.files if h in training]
    if seen:
        shown = ", ".join(repr(p) for p in seen[:2]) + (f" and {len(seen) - 2} more" if len(seen) > 2 else "")
        raise UnseenError(f"{len(seen)} of the images in {name!r} are training images of these weights (their bytes' "
                          f"SHA-256 is listed by the run's run.json): {shown}; remove them, or drop --unseen to score "
                          "the run's own held-out split")


def check_unseen_dataset(dataset: str | os.PathLike[str] | None) -> None:
    """``--unseen`` names a folder: a built-in dataset has its own test split (and no dataset is no folder)."""
    if dataset is None or dataset_name(dataset) in BUILTIN:
        shown = "no --dataset" if dataset is None else f"--dataset {dataset_name(dataset)}"
        raise UnseenError(f"--unseen scores a folder of new images, but {shown} was given; pass the folder with "
                          "--dataset DIR (a built-in dataset has its own test split: drop --unseen)")


def output_indices(folder_classes: Sequence[str], model_classes: tuple[str, ...], where: str) -> np.ndarray:
    """Each folder class's output index in the model, by name (the names as written: folders and weights both
    pass the one name rule); a class the model has no output for is refused, naming it and the model's classes."""
    from .registry import how_alike, normalisation_twins

    index = {c: i for i, c in enumerate(model_classes)}
    unknown = [c for c in folder_classes if c not in index]
    if unknown:
        c = unknown[0]
        near = next((m for m in model_classes if normalisation_twins((m, c)) or m.casefold() == c.casefold()), None)
        hint = ""
        if near is not None:
            why = how_alike(c, near) if normalisation_twins((near, c)) else f"{c!r} and {near!r} differ only in case"
            hint = f" ({why}; rename the folder to {near!r})"
        shown = ", ".join(repr(m) for m in model_classes[:12]) + (", ..." if len(model_classes) > 12 else "")
        more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
        raise UnseenError(f"class folder {c!r}{more} of {where!r} is not one of the model's {len(model_classes)} "
                          f"classes ({shown}){hint}; a model cannot be scored on a class it has no output for: "
                          "rename the folder to the model's name for that class, or remove it")
    return np.array([index[c] for c in folder_classes], dtype=np.int64)


def test_set_line(test_set: dict[str, Any], evaluated: int) -> str:
    """What was scored, in words: ``all 240 images of folder:new_photos, declared unseen (...)``."""
    total = test_set["folder_images"]
    which = f"all {total:,} images" if evaluated == total else f"a stratified {evaluated:,} of the {total:,} images"
    return f"{which} of {test_set['dataset']}, {test_set.get('declared', DECLARED)}"


def checked_line(test_set: dict[str, Any]) -> str:
    """The printed ``checked:`` line: which check was made, and what is left to the user's word."""
    left = ("that no other copy of a training image (re-encoded, resized, cropped) is among them"
            if test_set.get("declared") == DECLARED_CHECKED else "that none of these images was trained on")
    return f"checked: {test_set['checked']}; {left} is your declaration"
