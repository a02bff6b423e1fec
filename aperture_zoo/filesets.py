"""A set of files written whole: staged beside its destination, moved in at the end under a lock.

Readers join files that belong together (an ONNX file and its validation report, weights and the
card describing them, the demo's files and its manifest). Written one by one into the destination,
a killed or failed writer would leave a new file beside an old file's report, and two writers into
one folder would mix their sets. So a writer stages its set in ``<dest>/.aperture-stage-...`` (the
same file system, so moving in is a rename) and moves it in with :func:`move_in`, which holds the
folder's lock (``filelock``) while it removes the old files the set replaces and renames the new
ones in. A killed writer leaves only its hidden stage folder, which the next writer into the folder
removes. Readers still check every join by content (``provenance``): a rename is not atomic across
several files, a hash is.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import ApertureError
from .files import _fsync_dir

LOCK_NAME = ".aperture.lock"  # not the run folder's .lock: exporting into a run folder must not wait on its training
STAGE_PREFIX = ".aperture-stage-"
# Names a set's writer keeps out of what it publishes (an upload, a listing).
HIDDEN_PATTERNS = (LOCK_NAME, STAGE_PREFIX + "*")


def _host() -> str:
    return "".join(c if c.isalnum() else "_" for c in socket.gethostname())[:40] or "host"


def folder_lock(dest: str | os.PathLike[str]):  # -> filelock.FileLock
    """The lock every writer of a file set into ``dest`` holds while it moves its set in (one object
    per path in a process, so a writer that holds it may call ``move_in``, which takes it again)."""
    from filelock import FileLock

    Path(dest).mkdir(parents=True, exist_ok=True)
    return FileLock(str(Path(dest).resolve() / LOCK_NAME), is_singleton=True)


@contextmanager
def staged(dest: str | os.PathLike[str]) -> Iterator[Path]:
    """A fresh hidden folder inside ``dest`` to write a set into; removed afterwards, whatever happens."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    sweep(dest)
    stage = Path(tempfile.mkdtemp(dir=dest, prefix=f"{STAGE_PREFIX}{_host()}-{os.getpid()}-"))
    try:
        yield stage
    except (OSError, ApertureError) as exc:
        _name_the_destination(exc, stage, dest)
        raise
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _name_the_destination(exc: BaseException, stage: Path, dest: Path) -> None:
    """An error about a staged file names the file the user asked for (``dest/x``), not the stage's."""
    def mapped(name: object) -> object:
        text = str(name)
        return str(dest / Path(text).relative_to(stage)) if text.startswith(str(stage) + os.sep) else name

    if isinstance(exc, OSError) and exc.filename is not None:
        exc.filename = mapped(exc.filename)
        if exc.filename2 is not None:
            exc.filename2 = mapped(exc.filename2)
            if str(exc.filename2) == str(exc.filename):
                exc.filename2 = None
    if isinstance(exc, ApertureError) and exc.args and isinstance(exc.args[0], str):
        exc.args = (exc.args[0].replace(str(stage) + os.sep, str(dest) + os.sep), *exc.args[1:])


def copy_file(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> Path:
    """Copy into a stage, flushed to disk: a set moved in by rename must not hold a file a crash empties."""
    try:
        shutil.copyfile(src, dst)
        with open(dst, "rb+") as f:
            os.fsync(f.fileno())
    except OSError as exc:  # a full or read-only disk: name the file being written
        if exc.filename is None:
            exc.filename = str(dst)
        raise
    return Path(dst)


def sweep(dest: Path) -> list[Path]:
    """Remove stage folders left in ``dest`` by writers of this machine that no longer run (killed)."""
    removed = []
    prefix = f"{STAGE_PREFIX}{_host()}-"
    for path in dest.glob(prefix + "*"):
        pid = path.name[len(prefix):].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)) and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def _remove(path: Path) -> None:
    """A file, or a folder an exporter writes as one model (a Core ML ``.mlpackage``)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def move_in(stage: Path, dest: Path, names: Iterable[str], replaces: Iterable[str] = ()) -> list[Path]:
    """Under ``dest``'s lock: remove the old files ``replaces`` names (those the new set supersedes and
    does not bring again), then rename every one of ``names`` from ``stage`` into ``dest``.

    Old files go first and reports (``*.json``) come in last, so that a reader looking in the middle
    of the move finds at worst a file without its report, never an old report beside a new file.
    """
    names = list(dict.fromkeys(names))
    order = sorted(names, key=lambda n: n.endswith(".json"))
    with folder_lock(dest):
        for old in dict.fromkeys(replaces):
            if old not in names:
                _remove(dest / old)
        for name in names:  # an old report goes before the new file it does not describe comes in
            if name.endswith(".json"):
                (dest / name).unlink(missing_ok=True)
        moved = []
        for name in order:
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.is_dir() and not target.is_symlink():  # a folder (a Core ML package) is not renamed over
                shutil.rmtree(target)
            os.replace(stage / name, target)
            moved.append(target)
        _fsync_dir(dest)
    return moved
