"""What a folder dataset holds, said before any training: the data report.

Training on a folder used to pass silently over what it found: a class of one image, an empty
class folder, the same picture filed under two classes, a parent of several datasets read as one.
``analyse`` looks at a decoded folder and either refuses it (one line naming the files or classes
and the fix) or returns a ``DataReport``: classes with counts, files ignored and why, files that
could not be decoded, exact duplicates by content and how they were treated, and the dataset's
manifest identity. ``aperture train`` prints it and ``run.json`` records it; ``aperture
data-report DIR`` shows it alone.

Duplicates: copies with the same label are kept once (the first in train/, then test/, then path
order), so the same picture can never be on both sides of a split; copies under different labels
are refused, since one of the labels is wrong. Files that cannot be decoded are never duplicates.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .folder import DecodedFolder, FolderError, load_folder
from .terminal import fragment as visible  # the one gate: control, bidi and newline characters shown, never sent

MIN_IMAGES = 2  # per class in a folder without its own test/: one to train on, one to test
_LISTED = 100   # entries of each list kept in run.json (counts are always complete)


class DataReportError(FolderError):
    """A folder whose content would train a silently wrong model; the message names the files and the fix."""


@dataclass
class DataReport:
    root: str
    layout: str                                  # "pool" or "split"
    classes: dict[str, dict[str, int]]           # class -> {"images": n} (pool) or {"train": n, "test": n}
    manifest_sha256: str
    files: int                                   # image files found (readable or not, copies included)
    ignored: list[tuple[str, str]] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    duplicates: list[tuple[str, list[str]]] = field(default_factory=list)  # (kept, dropped copies)
    linked_outside: list[tuple[str, str]] = field(default_factory=list)  # (relpath, real path) via links out of root
    notes: list[str] = field(default_factory=list)
    keep: np.ndarray | None = None               # per decoded image: used for training/testing

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": self.root, "layout": self.layout, "classes": self.classes, "manifest_sha256": self.manifest_sha256,
            "files": self.files, "images": int(sum(sum(c.values()) for c in self.classes.values())),
            "ignored_count": len(self.ignored), "ignored": [list(x) for x in self.ignored[:_LISTED]],
            "unreadable_count": len(self.unreadable), "unreadable": [list(x) for x in self.unreadable[:_LISTED]],
            "duplicate_copies_dropped": sum(len(d) for _, d in self.duplicates),
            "duplicates": [{"kept": k, "dropped": d} for k, d in self.duplicates[:_LISTED]], "notes": self.notes,
            "linked_outside_count": len(self.linked_outside),
            "linked_outside": [list(x) for x in self.linked_outside[:_LISTED]],
        }

    def lines(self) -> list[str]:
        """The report as printed lines (outside text with its control characters shown, not sent)."""
        images = sum(sum(c.values()) for c in self.classes.values())
        head = (f"data: {visible(self.root)} ({'train/ and test/ as given' if self.layout == 'split' else 'one pool'}"
                f"), {len(self.classes)} classes, {images:,} images, manifest {self.manifest_sha256[:12]}")
        out = [head, "  " + ", ".join(f"{visible(c)} {_counts(n)}" for c, n in self.classes.items())]
        if self.ignored:
            why = Counter(_kind(r) for _, r in self.ignored)
            folders = sum(os.path.isdir(os.path.join(self.root, rel)) for rel, _ in self.ignored)  # val/, __MACOSX/
            what = " and ".join(_n(n, w) for n, w in ((len(self.ignored) - folders, "file"), (folders, "folder")) if n)
            out.append(f"  ignored {what}: " + ", ".join(f"{n} {k}" for k, n in why.items())
                       + f" (e.g. {visible(self.ignored[0][0])})")
        if self.unreadable:
            out.append(f"  skipped {_n(len(self.unreadable), 'unreadable file')}: " + "; ".join(
                f"{visible(p)}: {visible(r)}" for p, r in self.unreadable[:3]) + (" ..." if len(self.unreadable) > 3 else ""))
        if self.linked_outside:
            rel, real = self.linked_outside[0]
            out.append(f"  {_n(len(self.linked_outside), 'image')} read through symlinks that lead outside the folder "
                       f"(used as part of it), e.g. {visible(rel)} -> {visible(real)}")
        if self.duplicates:
            dropped = sum(len(d) for _, d in self.duplicates)
            kept, copies = self.duplicates[0]
            out.append(f"  {_n(dropped, 'exact copy', 'exact copies')} of other images in the same class dropped (each "
                       f"image kept once, never on both sides of a split), e.g. {visible(copies[0])} = {visible(kept)}")
        out += [f"  {visible(n)}" for n in self.notes]
        return out


def folder_report(root: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None = None) -> DataReport:
    """The data report of ``root`` (decoding it once, or reading the cache); refuses what ``analyse`` refuses."""
    return analyse(load_folder(root, cache_dir=cache_dir))


def analyse(decoded: DecodedFolder, split: bool = True) -> DataReport:
    """The report of a decoded folder, or a ``DataReportError`` for conflicting copies or too-small classes.

    ``split=False``: a folder scored whole (``eval --unseen``) is never split, so a class of one image is used."""
    scan = decoded.scan
    keep, duplicates = _deduplicate(decoded)
    report = DataReport(str(scan.root), scan.layout, {}, scan.manifest().sha256, len(scan.files),
                        ignored=list(scan.ignored), unreadable=list(decoded.skipped), duplicates=duplicates, keep=keep,
                        linked_outside=list(scan.linked_outside))
    labels, splits = decoded.labels[keep], decoded.splits[keep]
    for c, name in enumerate(scan.classes):
        if scan.layout == "split":
            report.classes[name] = {s: int(((labels == c) & (splits == s)).sum()) for s in ("train", "test")}
        else:
            report.classes[name] = {"images": int((labels == c).sum())}
    _check_test_copies(decoded, keep, scan.test_dir or "test")
    if split:
        _check_sizes(report, scan.test_dir or "test")
    report.notes += _case_twins(scan.classes)
    return report


def _case_twins(classes: tuple[str, ...]) -> list[str]:
    """Class names equal but for case (``Cat``, ``cat``): two classes here, one folder on a case-insensitive
    file system (macOS, Windows), so a copy of the data there merges them. Named, not refused: they may be meant."""
    groups: dict[str, list[str]] = {}
    for name in classes:
        groups.setdefault(name.lower(), []).append(name)
    return [f"classes {' and '.join(repr(n) for n in names)} differ only in case: kept as {len(names)} classes, but on "
            "a case-insensitive file system (macOS, Windows) they are one folder; rename one if they are one class"
            for names in groups.values() if len(names) > 1]


def _check_test_copies(decoded: DecodedFolder, keep: np.ndarray, test_dir: str) -> None:
    """train/ + test/ whose every test image copies a training one (dropped): nothing is left to test on; refuse.

    One class in that state is trained on and never tested, and said so (``_check_sizes``), like a
    class with no test images; the whole test set copied would give no test figure at all.
    """
    test = decoded.splits == "test"
    if decoded.scan.layout != "split" or not test.any() or (test & keep).any():
        return
    counts = [(name, int((test & (decoded.labels == c)).sum())) for c, name in enumerate(decoded.scan.classes)]
    shown = ", ".join(f"{visible(name)} {n}" for name, n in counts if n)
    raise DataReportError(
        f"all {_n(int(test.sum()), 'image')} in {test_dir}/ ({shown}) are exact copies of training images, dropped so "
        f"that no picture is on both sides of the split: nothing is left to test on; put images the model never "
        f"trains on in {test_dir}/<class>/")


def _deduplicate(decoded: DecodedFolder) -> tuple[np.ndarray, list[tuple[str, list[str]]]]:
    """Which decoded images to use: each content once per label; copies under two labels are refused."""
    groups: dict[str, list[int]] = {}
    for i, f in enumerate(decoded.files):
        groups.setdefault(f.sha256, []).append(i)
    keep = np.ones(len(decoded.files), bool)
    duplicates: list[tuple[str, list[str]]] = []
    conflicts: list[list[int]] = []
    for members in groups.values():
        if len(members) < 2:
            continue
        if len({decoded.files[i].label for i in members}) > 1:
            conflicts.append(members)
            continue
        keep[members[1:]] = False  # scan order: train/ before test/, then by path
        duplicates.append((decoded.files[members[0]].relpath, [decoded.files[i].relpath for i in members[1:]]))
    if conflicts:
        def pair(m: list[int]) -> str:
            return " = ".join(repr(decoded.files[i].relpath) for i in m[:3])

        shown = "; ".join(pair(m) for m in conflicts[:3]) + (f" and {len(conflicts) - 3} more" if len(conflicts) > 3 else "")
        raise DataReportError(
            f"{len(conflicts)} image(s) are filed under two different classes (byte-identical files): {visible(shown)}; "
            "one label is wrong: remove each copy from the class it does not belong to")
    return keep, duplicates


def _check_sizes(report: DataReport, test_dir: str) -> None:
    """Refuse classes a split cannot use; say how it treats a class with nothing to test on."""
    if report.layout == "split":
        if not any(n["test"] for n in report.classes.values()):
            raise DataReportError(f"{test_dir}/ of {visible(report.root)!r} holds no readable images; add images the "
                                  f"model never trains on to {test_dir}/<class>/")
        empty = [c for c, n in report.classes.items() if n["train"] == 0]
        where = "readable training images (train/<class>/)"
        for c, n in report.classes.items():
            if n["train"] and not n["test"]:
                report.notes.append(f"class {c!r} has no images in {test_dir}/: trained on, never tested (its "
                                    "accuracy shows 'no images')")
    else:
        empty = [c for c, n in report.classes.items() if n["images"] < MIN_IMAGES]
        where = f"at least {MIN_IMAGES} readable images (one to train on, one to test)"
    if empty:
        counts = ", ".join(f"{c!r} ({sum(report.classes[c].values())})" for c in empty[:5])
        more = f" and {len(empty) - 5} more" if len(empty) > 5 else ""
        raise DataReportError(
            f"{len(empty)} class folder(s) of {visible(report.root)!r} lack {where}: {visible(counts)}{more}; add "
            "images to them, or remove those folders (a head output that never trains is a silently wrong class)")


def _counts(n: dict[str, int]) -> str:
    return f"{n['images']}" if "images" in n else f"{n['train']}+{n['test']}"


def _kind(reason: str) -> str:
    return reason.split(" (")[0]


def _n(count: int, one: str, many: str | None = None) -> str:
    return f"{count} {one if count == 1 else (many or one + 's')}"
