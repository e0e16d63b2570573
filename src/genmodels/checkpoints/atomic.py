"""Atomic file writes: a reader sees the old file or the new one, never a torn one.

The one writer every module uses (checkpoints, images, configs, caches). The temporary file is
created exclusively beside the target (hidden, unique per process and call), fsynced, renamed
over the target with ``os.replace`` (atomic on POSIX) and the folder fsynced, so a kill at any
moment leaves either the old file or the new complete one. The file gets the mode a plain
``open(path, "w")`` would give (0o666 less the umask), not ``mkstemp``'s 0o600.

``write_folder_atomic`` does the same for a folder (a diffusers model): it is filled under a
hidden temporary name and renamed into place only when complete (``rename`` of a directory is
atomic on POSIX), so an interrupted writer never leaves a partial folder under the final name.
Temporaries of writers that died (their PID is no longer alive) are removed by the next writer
of the same target; those of live processes are left alone.
"""

from __future__ import annotations

import itertools
import os
import shutil
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "TMP_MARK",
    "fsync_path",
    "pid_alive",
    "remove_stale_temps",
    "temp_path",
    "umask_mode",
    "write_atomic",
    "write_folder_atomic",
]

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


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID exists (signal 0 probes without signalling)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _temp_pid(name: str, target: str) -> int | None:
    """The writer PID of a temporary name ``.<target>.tmp-<pid>-<n>`` (None: not one)."""
    head = f".{target}{TMP_MARK}"
    if not name.startswith(head):
        return None
    pid, _, count = name[len(head) :].partition("-")
    return int(pid) if pid.isdigit() and count.isdigit() else None


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Remove the temporaries beside ``path`` left by writers that died (PID not alive);
    returns what was removed. Temporaries of live processes (this one included) are kept."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    removed = []
    for entry in path.parent.iterdir():
        pid = _temp_pid(entry.name, path.name)
        if pid is None or pid == os.getpid() or pid_alive(pid):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def _fsync_tree(root: Path) -> None:
    for folder, _, files in os.walk(root):
        for name in files:
            fsync_path(Path(folder) / name)
        fsync_path(folder)


def write_folder_atomic(
    path: str | os.PathLike, write: Callable[[Path], None], replace: bool = False
) -> Path:
    """Call ``write(tmp)`` on a new hidden temporary folder beside ``path``, fsync it, then
    rename it to ``path``. ``path`` may be missing or an empty folder; a non-empty one is
    replaced only with ``replace=True`` (moved aside, then removed after the rename). On any
    error the temporary folder is removed and ``path`` is left as it was."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path}: exists and is not a folder")
    if path.is_dir() and any(path.iterdir()) and not replace:
        raise FileExistsError(f"{path}: destination folder exists and is not empty")
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    tmp = temp_path(path)
    os.mkdir(tmp)  # 0o777 less the umask, like any folder (not mkdtemp's 0o700)
    old = None
    try:
        write(tmp)
        _fsync_tree(tmp)
        if path.is_dir() and any(path.iterdir()):
            old = temp_path(path)  # a dead writer's name: removed by the next writer if we die
            os.rename(path, old)
        os.rename(tmp, path)  # replaces an empty folder atomically
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not path.exists():
            os.rename(old, path)  # put the previous folder back
        raise
    fsync_path(path.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return path
