"""Run logging on rank 0: a CSV of scalars, a progress bar with ETA, TensorBoard if installed."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from tqdm import tqdm

__all__ = ["RunLogger"]

FIELDS = ("step", "loss", "lr", "grad_norm", "images_per_s")


class RunLogger:
    """Writes ``<out_dir>/log.csv`` (appending on resume), a tqdm bar and TensorBoard scalars.

    TensorBoard is used only when ``torch.utils.tensorboard`` imports (``tensorboard`` is not a
    dependency). Inactive (all no-ops) on ranks other than 0.
    """

    def __init__(
        self, out_dir: str | Path, total: int, start: int = 0, active: bool = True, bar: bool = True
    ) -> None:
        self.active = active
        self.bar = None
        self.writer = None
        self._file = None
        if not active:
            return
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        path = out / "log.csv"
        new = not path.exists()
        self._file = path.open("a", newline="")
        self._csv = csv.DictWriter(self._file, fieldnames=FIELDS, extrasaction="ignore")
        if new:
            self._csv.writeheader()
        if bar:
            self.bar = tqdm(total=total, initial=start, desc="train", dynamic_ncols=True)
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            pass
        else:
            self.writer = SummaryWriter(str(out / "tensorboard"))

    def advance(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.active:
            return
        self._csv.writerow({"step": step, **metrics})
        self._file.flush()
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{metrics.get('loss', float('nan')):.4f}")
        if self.writer is not None:
            for key, value in metrics.items():
                self.writer.add_scalar(f"train/{key}", value, step)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self._file is not None:
            self._file.close()
        if self.writer is not None:
            self.writer.close()
