"""The one base class for errors whose message is meant for the user.

Every such error names the problem and the fix; the CLI prints it as one line and exits 2.
Subclasses also derive from the matching builtin (ValueError, KeyError, ...) so ordinary
``except`` clauses keep working.
"""


class ApertureError(Exception):
    """An expected failure with an actionable message (bad name, bad file, no data, no network)."""


class FileSystemError(ApertureError, OSError):
    """The operating system refused a read or write (full disk, read-only, permissions, wrong kind of file)."""


# errno -> (what happened, the fix). Kept as a table so every writer words the same failure the same way.
_OS_FIXES = {
    "ENOSPC": ("no space left on the device", "free some space or choose another output location"),
    "EDQUOT": ("the disk quota is exceeded", "free some space or choose another output location"),
    "EROFS": ("the file system is read-only", "choose a writable output location (--out)"),
    "EACCES": ("permission denied", "choose a location you can write to, or fix its permissions"),
    "EPERM": ("operation not permitted", "choose a location you can write to, or fix its permissions"),
    "EEXIST": ("it exists already and is not a folder", "pass a folder path (or a new name) instead"),
    "ENOTDIR": ("a part of the path is a file, not a folder", "pass a folder path (or a new name) instead"),
    "EISDIR": ("it is a folder where a file is needed", "pass a file path instead"),
    "ENOENT": ("it does not exist", "check the path"),
    "ENAMETOOLONG": ("the name is too long", "choose a shorter path"),
    "EIO": ("an input/output error occurred (a failing disk?)", "check the disk and try again"),
}


def os_error(exc: OSError, action: str = "read or written") -> FileSystemError:
    """An OSError as a one-line FileSystemError naming the path, what happened and the fix."""
    import errno

    if isinstance(exc, ApertureError):
        return exc  # type: ignore[return-value]
    name = errno.errorcode.get(exc.errno or 0, "")
    what, fix = _OS_FIXES.get(name, (exc.strerror or str(exc) or type(exc).__name__, "check the path and try again"))
    if exc.filename is None:
        err = FileSystemError(f"a file could not be {action}: {what}; {fix}")
    else:
        where = repr(str(exc.filename)) + (f" -> {str(exc.filename2)!r}" if exc.filename2 is not None else "")
        err = FileSystemError(f"{where}: {what}; {fix}")
    err.errno = exc.errno
    return err
