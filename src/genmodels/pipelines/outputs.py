"""Output files that never overwrite: A1111's ``NNNNN-seed.png`` names, allocated atomically.

A1111 (``modules/images.py``, ``get_next_sequence_number``) numbers the files of a folder: the
next image is one more than the highest leading number already there. Here grids count too
(``grid-NNNNN.png`` takes a number of the same sequence), and two processes writing to one
folder cannot take the same number: the scan and the reservation happen under an exclusive
``flock`` of the folder, and the name is created with ``O_EXCL`` (retrying with the next number
when something else created it meanwhile). The image is then written to a hidden temporary
file and renamed over the reserved name (``checkpoints.atomic.write_atomic``); on any error
(Ctrl-C included) the temporary file and the reserved name are removed.

OS errors (disk full, read-only folder, ...) become ``OutputError``: one line naming the file.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from PIL import Image

from genmodels.pipelines.images import save_png

__all__ = [
    "OutputError", "check_outdir", "grid_name", "image_name", "next_index", "reserve_path",
    "write_output",
]  # fmt: skip

_INDEX = re.compile(r"(?:grid-)?(\d+)(?=[-.])")
_MAX_NAME = 64  # our longest file name, with the temporary-file suffix, is about this long


class OutputError(ValueError):
    """An output file or folder that cannot be written."""


def _oserror(exc: OSError, path: Path) -> OutputError:
    return OutputError(f"cannot write {path}: {exc.strerror or exc}")


def check_outdir(outdir: str | os.PathLike) -> Path:
    """Check, without creating anything, that ``outdir`` is or can become a writable folder."""
    outdir = Path(outdir)
    name_max = os.pathconf("/", "PC_NAME_MAX")
    for part in outdir.absolute().parts:  # before any stat, which fails on such names
        if len(os.fsencode(part)) > name_max:
            raise OutputError(f"output folder name {part[:40]!r}... is longer than {name_max}")
    existing = outdir.absolute()
    while not existing.exists():
        if existing.is_symlink():
            raise OutputError(f"output folder {outdir}: {existing} is a dangling link")
        existing = existing.parent
    if not existing.is_dir():
        what = "is a file" if existing == outdir.absolute() else f"is inside a file ({existing})"
        raise OutputError(f"output folder {outdir} {what}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"output folder {outdir}: {existing} is not writable")
    path_max = os.pathconf(existing, "PC_PATH_MAX")
    if len(os.fsencode(str(outdir.absolute()))) + _MAX_NAME > path_max:
        raise OutputError(f"output folder path {str(outdir)[:40]!r}... is too long")
    return outdir


def next_index(outdir: Path) -> int:
    """One more than the highest leading number of a file in ``outdir`` (0 when none)."""
    numbers = [int(m.group(1)) for name in os.listdir(outdir) if (m := _INDEX.match(name))]
    return max(numbers, default=-1) + 1


@contextmanager
def _folder_lock(outdir: Path) -> Iterator[None]:
    """An exclusive ``flock`` of the folder itself (no lock file); where the file system has no
    locks, O_EXCL alone still prevents overwriting."""
    fd = os.open(outdir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            pass
        yield
    finally:
        os.close(fd)  # releases the lock


def reserve_path(outdir: str | os.PathLike, name: Callable[[int], str]) -> Path:
    """Create (empty, ``O_EXCL``) and return ``outdir / name(i)`` for the next free number i."""
    outdir = Path(outdir)
    try:
        outdir.mkdir(parents=True, exist_ok=True)
        with _folder_lock(outdir):
            index = next_index(outdir)
            for _ in range(1000):
                path = outdir / name(index)
                try:
                    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
                    return path
                except FileExistsError:
                    index = max(index + 1, next_index(outdir))
    except OSError as exc:
        raise _oserror(exc, outdir) from None
    raise OutputError(f"cannot find a free file name in {outdir}")


def write_output(
    outdir: str | os.PathLike,
    name: Callable[[int], str],
    image: Image.Image,
    parameters: str | None = None,
) -> Path:
    """Reserve the next ``name(i)`` in ``outdir`` and write ``image`` there as a PNG."""
    path = reserve_path(outdir, name)
    try:
        return save_png(image, path, parameters)
    except OSError as exc:
        path.unlink(missing_ok=True)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise OutputError(f"cannot write {path}: the disk is full ({exc.strerror})") from None
        raise _oserror(exc, path) from None
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def image_name(seed: int) -> Callable[[int], str]:
    """A1111's ``NNNNN-seed.png``."""
    return lambda index: f"{index:05d}-{seed}.png"


def grid_name(index: int) -> str:
    return f"grid-{index:05d}.png"
