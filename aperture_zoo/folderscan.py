"""What is in a folder of the user's own images, ``DIR/<class>/<image>``, before anything is decoded.

Layout: ``DIR/train/<class>/`` with ``DIR/test/<class>/`` (or ``DIR/val/``) is used as given;
otherwise every ``DIR/<class>/`` is one pool that the caller splits (``datasets.py``). Class names
are the folder names, sorted, exactly as written (spaces, unicode, brackets included); two names that read
alike (NFC ``café`` and NFD ``café``, ``cat`` with a Cyrillic ``а``) are refused, since no output could tell them apart. Symlinks are
followed (a dataset assembled from links is common) and loops detected; files reached through a link
that leads outside the folder are listed (``Scan.linked_outside``), so the data report names them. What is not read is named with why (hidden or system files, other
extensions, files outside any class folder, a val/ beside the test/ that is used), and a folder whose "classes" look like datasets of
their own (train/ + test/ inside, or only class-like sub-folders) is refused, naming them.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ApertureError
from .files import user_path
from .manifest import Manifest
from .registry import how_alike, normalisation_twins


class FolderError(ApertureError, ValueError):
    """A folder that cannot be used as a dataset; the message says what to change."""


@dataclass(frozen=True)
class FileEntry:
    relpath: str   # relative to the dataset root, "/"-separated
    label: int
    split: str     # "train", "test" or "pool" (no given split: the caller holds out a test share)
    size: int
    sha256: str = ""  # of the file's bytes ("" until hashed, or unreadable)


@dataclass
class Scan:
    """What is in the folder, before any image is decoded."""

    root: Path
    layout: str                          # "split" (train/ + test/ or val/) or "pool"
    classes: tuple[str, ...]
    files: list[FileEntry]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (relpath, reason) found while scanning
    ignored: list[tuple[str, str]] = field(default_factory=list)  # (relpath, why): not images, never read
    test_dir: str | None = None          # "test" or "val" for the split layout
    linked_outside: list[tuple[str, str]] = field(default_factory=list)  # (relpath, real path): via a link out of root

    def manifest(self) -> Manifest:
        """Every image file's path, class and SHA-256 (see ``manifest.py``)."""
        return Manifest.of((f.relpath, self.classes[f.label], f.sha256) for f in self.files)


def _image_extensions() -> frozenset[str]:
    from PIL import Image

    return frozenset(ext.lower() for ext in Image.registered_extensions())


def _is_hidden(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX"


def _walk_files(top: Path, root: Path, skipped: list[tuple[str, str]], ignored: list[tuple[str, str]],
                outside: list[tuple[str, str]]) -> list[tuple[str, os.stat_result]]:
    """Every regular file under ``top`` (symlinks followed, loops detected), as (relpath, stat); the files
    whose real path is not under ``root`` (resolved) go to ``outside`` too."""
    out: list[tuple[str, os.stat_result]] = []
    seen: set[tuple[int, int]] = set()

    def rel(p: Path) -> str:
        return p.relative_to(root).as_posix()

    def leaves(path: Path, entry: os.DirEntry[str], parent_out: bool) -> bool:
        if not entry.is_symlink():
            return parent_out
        return not Path(os.path.realpath(path)).is_relative_to(root)

    def visit(folder: Path, out_of_root: bool = False) -> None:
        try:
            st = folder.stat()
        except OSError as exc:
            skipped.append((rel(folder), _os_reason(exc)))
            return
        if (st.st_dev, st.st_ino) in seen:
            skipped.append((rel(folder), "symlink loop (this folder is already part of the walk)"))
            return
        seen.add((st.st_dev, st.st_ino))
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            skipped.append((rel(folder), _os_reason(exc)))
            return
        for entry in entries:
            if _is_hidden(entry.name):
                ignored.append((rel(folder / entry.name), _HIDDEN))
                continue
            path = folder / entry.name
            try:
                st_entry = path.stat()  # follows symlinks; a loop raises ELOOP
            except OSError as exc:
                skipped.append((rel(path), _os_reason(exc)))
                continue
            away = leaves(path, entry, out_of_root)
            if stat.S_ISDIR(st_entry.st_mode):
                visit(path, away)
            elif stat.S_ISREG(st_entry.st_mode):
                out.append((rel(path), st_entry))
                if away:
                    outside.append((rel(path), os.path.realpath(path)))

    visit(top, not Path(os.path.realpath(top)).is_relative_to(root))  # a class folder that is itself a link
    return out


_HIDDEN = "hidden or system file (a dot file, __MACOSX)"


def _os_reason(exc: OSError) -> str:
    import errno

    if exc.errno == errno.ELOOP:
        return "symlink loop"
    if exc.errno == errno.ENOENT:
        return "broken symlink"
    if exc.errno == errno.EACCES:
        return "permission denied"
    return f"unreadable ({exc.strerror or exc})"


def _class_dirs(folder: Path) -> list[str]:
    try:
        return sorted(e.name for e in os.scandir(folder) if not _is_hidden(e.name) and _is_dir(folder / e.name))
    except OSError as exc:
        raise FolderError(f"cannot read the folder {str(folder)!r} ({exc.strerror or exc}); check its permissions") from None


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:  # a symlink loop in place of a class folder: counted when walked, not a class
        return False


def scan_folder(root: str | os.PathLike[str]) -> Scan:
    """List the folder's classes and image files (nothing decoded); one-line errors for unusable layouts."""
    root = user_path(root)
    if not root.exists():
        raise FolderError(f"dataset folder {str(root)!r} does not exist; pass cifar10, cifar100 or a folder of "
                          "class folders (DIR/<class>/<image>)")
    if not root.is_dir():
        raise FolderError(f"--dataset {str(root)!r} is a file; pass a folder of class folders (DIR/<class>/<image>)")
    root = root.resolve()
    test_dir = given_test_dir(root)
    if test_dir is not None:
        classes = tuple(_class_dirs(root / "train"))
        test_classes = _class_dirs(root / test_dir)
        extra = [c for c in test_classes if c not in classes]
        _refuse_twins((*classes, *extra), f"train/ and {test_dir}/")  # before "train/ lacks" names a twin
        if extra:
            raise FolderError(
                f"{test_dir}/ has class folder(s) that train/ lacks: {', '.join(repr(c) for c in extra[:5])}"
                f"{' ...' if len(extra) > 5 else ''}; a model cannot learn a class it never sees. Add training "
                f"images for them under {str(root / 'train')!r} or remove them from {test_dir}/"
            )
        parts = [("train", root / "train"), ("test", root / test_dir)]
        layout = "split"
    else:
        pool = root / "train" if (root / "train").is_dir() else root
        classes = tuple(_class_dirs(pool))
        parts = [("pool", pool)]
        layout = "pool"
    _check_classes(root, classes)
    if layout == "pool":
        _refuse_datasets_as_classes(parts[0][1], classes)
    exts = _image_extensions()
    files: list[FileEntry] = []
    skipped: list[tuple[str, str]] = []
    outside: list[tuple[str, str]] = []
    ignored = _outside_classes(root, [base for _, base in parts], classes)
    for split, base in parts:
        for label, name in enumerate(classes):
            if not (base / name).is_dir():
                continue  # a class the test split does not have: its per-class accuracy shows "no images"
            for relpath, st in _walk_files(base / name, root, skipped, ignored, outside):
                ext = os.path.splitext(relpath)[1].lower()
                if ext not in exts:
                    ignored.append((relpath, f"not an image ({ext or 'no'} extension)"))
                    continue
                files.append(FileEntry(relpath, label, split, st.st_size))
    if not files:
        raise FolderError(f"no image files in {str(root)!r} (looked in {', '.join(n for n in classes[:5])}"
                          f"{' ...' if len(classes) > 5 else ''}); put PNG/JPEG/... files in each class folder")
    outside = [o for o in outside if os.path.splitext(o[0])[1].lower() in exts]
    return Scan(root, layout, classes, files, skipped, ignored, test_dir, outside)


def given_test_dir(root: str | os.PathLike[str]) -> str | None:
    """The test folder's name ("test" or "val") when ``root`` has its own split, used as given; None: one pool."""
    root = Path(root)
    test_dir = next((d for d in ("test", "val") if (root / d).is_dir()), None)
    return test_dir if (root / "train").is_dir() else None


def _outside_classes(root: Path, bases: list[Path], classes: tuple[str, ...]) -> list[tuple[str, str]]:
    """What sits beside the class folders (files in DIR, hidden folders): ignored, and said so."""
    out: list[tuple[str, str]] = []
    for folder in [root, *bases] if root not in bases else bases:
        wanted = set(classes) if folder in bases else {b.name for b in bases if b.parent == root}
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            continue
        for e in entries:
            if e.name in wanted:
                continue
            rel = (folder / e.name).relative_to(root).as_posix()
            unused_val = folder == root and e.name == "val" and (root / "test") in bases
            out.append((rel, _HIDDEN if _is_hidden(e.name) else _SECOND_TEST if unused_val else "not in a class folder"))
    return out


_SECOND_TEST = "a second test folder (test/ is the test split; val/ is used only without test/)"


def _refuse_datasets_as_classes(pool: Path, classes: tuple[str, ...]) -> None:
    """Refuse a parent of datasets read as one: its "classes" hold train/ + test/, or only class-like folders."""
    split_like = [c for c in classes if _has_own_split(pool / c)]
    nested = [c for c in classes if _only_class_folders(pool / c)]
    if not split_like and len(nested) < len(classes):
        return
    found = split_like or nested
    shown = ", ".join(repr(c) for c in found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
    why = "hold their own train/ and test/ folders" if split_like else "hold only class-like sub-folders, no images"
    raise FolderError(
        f"{str(pool)!r} looks like a folder of datasets, not of classes: {shown} {why}; pass one dataset, e.g. "
        f"--dataset {str(pool / found[0])!r} (if those sub-folders are kinds of one class, move their images "
        "up into the class folder)")


def _has_own_split(folder: Path) -> bool:
    return _is_dir(folder / "train") and (_is_dir(folder / "test") or _is_dir(folder / "val"))


def _only_class_folders(folder: Path) -> bool:
    """No image file of its own, and at least two sub-folders that each hold image files directly."""
    exts = _image_extensions()
    try:
        entries = [e for e in os.scandir(folder) if not _is_hidden(e.name)]
    except OSError:
        return False
    subs = [folder / e.name for e in entries if _is_dir(folder / e.name)]
    if len(subs) < 2 or any(os.path.splitext(e.name)[1].lower() in exts for e in entries if e.is_file()):
        return False
    return all(_holds_images(sub, exts) for sub in subs)


def _holds_images(folder: Path, exts: frozenset[str]) -> bool:
    try:
        return any(not _is_hidden(e.name) and os.path.splitext(e.name)[1].lower() in exts for e in os.scandir(folder))
    except OSError:
        return False


def _check_classes(root: Path, classes: tuple[str, ...]) -> None:
    where = "train/" if (root / "train").is_dir() else str(root)
    if not classes:
        raise FolderError(f"{str(root)!r} has no class folders; arrange images as DIR/<class>/<image> "
                          "(one sub-folder per class)")
    if len(classes) == 1 and classes[0] in ("test", "val") and not (root / "train").is_dir():
        raise FolderError(f"{str(root)!r} has {classes[0]}/ but no train/, so {classes[0]!r} was read as the only "
                          f"class; add DIR/train/<class>/ beside DIR/{classes[0]}/<class>/, or put the class "
                          "folders directly in DIR (a held-out split is then made)")
    if len(classes) == 1:
        raise FolderError(f"{where!r} has a single class folder ({classes[0]!r}); a classifier needs at least "
                          "two classes: add a folder per class")
    _refuse_twins(classes, where)


def _refuse_twins(classes: tuple[str, ...], where: str) -> None:
    twins = normalisation_twins(classes)
    if twins:
        a, b = twins[0]
        more = f" (and {len(twins) - 1} more such pair(s))" if len(twins) > 1 else ""
        raise FolderError(
            f"{how_alike(a, b, 'class folders', f' in {where!r}')}{more}: every output would show two identical-looking classes (and on macOS "
            "two Unicode forms are one folder); rename one of them, or merge their images into one folder")
