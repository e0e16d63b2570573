"""The run folder: one writer at a time, no mixing of runs, and a clean stop on Ctrl-C.

* ``RunLock``: an exclusive ``fcntl.flock`` on ``<out_dir>/.lock`` (holding the owner's PID), so
  a second training into the same folder fails at once, naming the holder, instead of deleting
  the first one's in-progress checkpoint. The kernel drops the lock when the process dies.
* ``check_fresh``: a folder that already holds a run is refused unless ``--resume`` (continue
  it) or ``--overwrite`` (delete what it holds first).
* ``StopSignal``: SIGINT / SIGTERM set a flag that the loop checks after each step; it then
  writes a checkpoint and exits with one line. A second Ctrl-C interrupts at once.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
from pathlib import Path
from types import FrameType

from genmodels.checkpoints.atomic import TMP_MARK

__all__ = ["RunExists", "RunLock", "StopSignal", "check_fresh", "clean_temporaries"]

LOCK = ".lock"


class RunExists(ValueError):
    """The output folder holds another run (or is in use)."""


class RunLock:
    """Exclusive lock on a run folder for the life of a training process."""

    def __init__(self, out_dir: str | Path) -> None:
        self.path = Path(out_dir) / LOCK
        self.fd: int | None = None

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunExists(
                f"{self.path.parent}: another training (PID {holder}) is writing to this run "
                "folder; wait for it or use another out_dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def _holds_run(out_dir: Path, owned: tuple[str, ...] | None) -> list[str]:
    if not out_dir.is_dir():
        return []
    names = [p.name for p in out_dir.iterdir() if p.name != LOCK]
    return sorted(n for n in names if owned is None or n.startswith(owned))


def check_fresh(
    out_dir: str | Path, resume: bool, overwrite: bool, owned: tuple[str, ...] | None = None
) -> None:
    """Refuse to start a new run in a folder that holds files, unless resuming or overwriting
    (which deletes them, the lock aside). ``owned``: only files whose names start with one of
    these prefixes count (a task sharing its folder with another, e.g. the transformer)."""
    out_dir = Path(out_dir)
    held = _holds_run(out_dir, owned)
    if not held or resume:
        return
    if not overwrite:
        shown = ", ".join(held[:5]) + (" ..." if len(held) > 5 else "")
        raise RunExists(
            f"{out_dir} already holds files ({shown}); continue that run with --resume, "
            "replace it with --overwrite, or choose another out_dir"
        )
    for name in held:
        p = out_dir / name
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()


def clean_temporaries(folder: str | Path) -> None:
    """Remove temporary files and folders that writers of this run left when killed (the
    caller holds the run lock, so none of them is being written)."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for p in folder.iterdir():
        if p.name.startswith(".") and TMP_MARK in p.name:
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


class StopSignal:
    """Turns the first SIGINT / SIGTERM into a flag (``requested``); restores the handlers on
    exit. Only installed in the main thread."""

    def __init__(self) -> None:
        self.requested: str | None = None
        self._old: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested is not None:  # the second one: stop now
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name
        print(f"\n{self.requested}: finishing this step, then saving a checkpoint "
              "(press Ctrl-C again to stop at once)", flush=True)  # fmt: skip

    def __enter__(self) -> StopSignal:
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        self._old.clear()
