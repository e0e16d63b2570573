"""Run logging on rank 0: a CSV of scalars, a progress bar with ETA and TensorBoard scalars
(event files written by ``tb_events.EventWriter``, no ``tensorboard`` package needed)."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from .tb_events import EventWriter

__all__ = ["FIELDS", "RunLogger"]

FIELDS = ("step", "loss", "lr", "grad_norm", "images_per_s", "skipped_images")


# ---- the run logger ---------------------------------------------------------------------------


def _trim_csv(path: Path, start: int) -> list[str]:
    """Drop rows after step ``start`` (logged after the checkpoint a resumed run starts from);
    returns the file's columns."""
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        fields = list(reader.fieldnames or FIELDS)
        rows = [r for r in reader if r.get("step", "").isdigit() and int(r["step"]) <= start]
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)
    return fields


class RunLogger:
    """Writes ``<out_dir>/log.csv``, a tqdm bar and TensorBoard scalars (``<out_dir>/tensorboard``).

    ``fields``: the CSV columns of a new file (the diffusion trainer's ``FIELDS`` by default);
    ``name``: the CSV's stem (``<name>.csv``; a task sharing a folder uses its own, whose
    TensorBoard events go to ``tensorboard/<name>``).

    A resumed run (``start`` > 0) continues the CSV after dropping the rows past ``start``, so
    the file holds each step once. Inactive (all no-ops) on ranks other than 0.
    """

    def __init__(
        self,
        out_dir: str | Path,
        total: int,
        start: int = 0,
        active: bool = True,
        bar: bool = True,
        fields: Sequence[str] = FIELDS,
        name: str = "log",
    ) -> None:
        self.active = active
        self.name = name
        self.bar = None
        self.writer: EventWriter | None = None
        self._file = None
        if not active:
            return
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"{name}.csv"
        existing = _trim_csv(path, start) if path.exists() else None
        self._file = path.open("a", newline="")
        columns = existing or list(fields)
        self._csv = csv.DictWriter(self._file, fieldnames=columns, extrasaction="ignore")
        if existing is None:
            self._csv.writeheader()
        if bar:
            self.bar = tqdm(total=total, initial=start, desc="train", dynamic_ncols=True)
        board = out / "tensorboard" if name == "log" else out / "tensorboard" / name
        self.writer = EventWriter(board, start)

    def advance(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.active:
            return
        metrics = {k: v for k, v in metrics.items() if k != "step"}  # the step is the x axis
        self._csv.writerow({"step": step, **metrics})
        self._file.flush()
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{metrics.get('loss', float('nan')):.4f}")
        else:  # no progress bar: a line per record
            values = " ".join(f"{k}={v:.4g}" for k, v in metrics.items())
            print(f"{self.name} step {step}: {values}", flush=True)
        if self.writer is not None:
            self.writer.add_scalars({f"train/{k}": v for k, v in metrics.items()}, step)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self._file is not None:
            self._file.close()
        if self.writer is not None:
            self.writer.close()
