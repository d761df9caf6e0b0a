"""Writing files and folders so that a crash never leaves one half-written.

A file is written to a temporary file beside it, flushed to disk (fsync) and renamed over the
target; a folder is built beside its target, synced, and swapped in, the old one removed last.
"""

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def _fsync(path: Path) -> None:
    """Flush a file's or a folder's data to disk (folders: their entries, e.g. a rename)."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def atomic_write(path: str | Path, write: Callable[[Path], None], mode: int = 0o644) -> Path:
    """Write a file atomically: ``write(temporary)`` fills a temporary file in the same folder,
    which is synced and renamed to ``path``. On any error the temporary file is removed and
    ``path`` is untouched. Parent folders are created.

    Args:
        path: the file to write.
        write: fills the file at the path it is given (open it in "wb"/"w" mode).
        mode: the file's permission bits.

    Returns:
        The path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    temporary = Path(name)
    try:
        write(temporary)
        _fsync(temporary)
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync(path.parent)
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """``atomic_write`` of bytes."""
    return atomic_write(path, lambda temporary: temporary.write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    """``atomic_write`` of UTF-8 text, newlines written as given."""
    return atomic_write(path, lambda temporary: temporary.write_text(text, encoding="utf-8", newline=""))


def replace_folder(staging: str | Path, target: str | Path) -> Path:
    """Move the finished folder ``staging`` to ``target`` (same file system), replacing it.

    The files of ``staging`` are synced first; an existing ``target`` is renamed aside and
    removed only once ``staging`` is in its place, so a crash leaves the old or the new folder.

    Returns:
        The target path.
    """
    staging, target = Path(staging), Path(target)
    for file in staging.rglob("*"):
        if file.is_file():
            _fsync(file)
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    staging.rename(target)
    _fsync(target.parent)
    shutil.rmtree(old, ignore_errors=True)
    return target
