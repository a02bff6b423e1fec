"""``eval --unseen``: every image of a folder scored as a test image, on the user's word that the weights never
trained on any of them (new images collected after training: an independent test set).

Weights record the folder they were trained on by one hash of its content manifest, not file by file,
so the one check possible is that this folder is not that training folder as a whole; the rest is the
user's declaration, and every report of such an evaluation (eval.json's ``test_set``, the printed
lines, a card) says so. Labels go by class NAME to the model's outputs, never by sorted position: a
folder holding only ``dog/`` and ``cat/`` scores a CIFAR-10 model's outputs 5 and 3.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .data import Split
from .datasets import BUILTIN, DatasetError, dataset_name, public_dataset

UNSEEN_KIND = "unseen folder"  # eval.json's test_set.kind
DECLARED = "declared unseen (--unseen; not checked image by image)"


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
) -> UnseenSet:
    """All images of ``dataset`` (``DIR/<class>/<image>``), decoded as training decodes them (the content-keyed
    cache, the image rule), labelled by name with the indices of ``class_names`` (the model's classes).

    ``metadata`` is the weights' (decoded): its recorded training-folder manifest is the one check made.
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
    manifest = decoded.scan.manifest().sha256
    record = metadata.get("data") if isinstance((metadata or {}).get("data"), dict) else {}
    trained_on = record.get("manifest_sha256") if isinstance(record.get("manifest_sha256"), str) else None
    if manifest == trained_on:
        raise UnseenError(f"{name!r} is the folder these weights were trained on (its manifest {manifest[:12]} is the one "
                          "they record), so its images are training images; drop --unseen to score its held-out split")
    lut = output_indices(decoded.scan.classes, tuple(class_names), name)
    keep = report.keep if report.keep is not None else np.ones(len(decoded.labels), bool)
    labels = lut[decoded.labels[keep]]
    images = decoded.images[keep]
    checked = ("only that it is not, as a whole, the folder these weights were trained on (they record that folder "
               "by one hash of its content, not image by image)" if trained_on is not None else
               "nothing: these weights record no training folder to compare with")
    test_set = {"kind": UNSEEN_KIND, "dataset": public_dataset(name), "manifest_sha256": manifest,
                "num_images": int(len(labels)), "folder_images": int(len(labels)),
                "classes": {c: int((labels == lut[i]).sum()) for i, c in enumerate(decoded.scan.classes)},
                "declared": DECLARED, "checked": checked}
    return UnseenSet(Split(images, labels.astype(np.int64), tuple(class_names)), test_set, report.lines())


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
    return f"{which} of {test_set['dataset']}, {DECLARED}"
