"""Atomic file writes: a reader sees the old file or the new one, never a torn one.

The one writer every module uses (checkpoints, images, configs, caches). The temporary file is
created exclusively beside the target (hidden, unique per process and call), fsynced, renamed
over the target with ``os.replace`` (atomic on POSIX) and the folder fsynced, so a kill at any
moment leaves either the old file or the new complete one. The file gets the mode a plain
``open(path, "w")`` would give (0o666 less the umask), not ``mkstemp``'s 0o600.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from pathlib import Path

__all__ = ["TMP_MARK", "fsync_path", "temp_path", "umask_mode", "write_atomic"]

TMP_MARK = ".tmp-"  # every temporary name holds it: ``.<name>.tmp-<pid>-<n>``
_counter = itertools.count()


def umask_mode(base: int = 0o666) -> int:
    """``base`` less the process umask: the mode ``open()`` / ``mkdir()`` would give."""
    mask = os.umask(0)
    os.umask(mask)
    return base & ~mask


def temp_path(path: str | os.PathLike) -> Path:
    """A hidden, per-process unique temporary name beside ``path``."""
    path = Path(path)
    return path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}-{next(_counter)}")


def fsync_path(path: str | os.PathLike) -> None:
    """fsync a file or a directory (its entries) by path."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a hidden temporary file beside ``path``, fsync it, then rename it
    to ``path`` (and fsync the folder). On any error the temporary file is removed and ``path``
    is left as it was."""
    path = Path(path)
    tmp = temp_path(path)
    # create it ourselves (exclusive, umask-respecting mode) so ``write`` only fills it
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        write(tmp)
        os.chmod(tmp, umask_mode())  # a writer that re-created the file keeps the normal mode
        fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)
    return path
