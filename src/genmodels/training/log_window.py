"""The log window: metrics summed over the steps since the last log line, averaged when logged.

A checkpoint stores the open window (``state_dict``), so a resumed run logs the same averages as
an uninterrupted one. Values are floats or tensors (e.g. code-usage counts), anything with ``+``.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["LogWindow"]


class LogWindow:
    def __init__(self) -> None:
        self.sums: dict[str, Any] = {}
        self.count = 0

    def add(self, metrics: dict[str, Any]) -> None:
        """Add one step's metrics."""
        for k, v in metrics.items():
            v = v.detach().cpu() if isinstance(v, torch.Tensor) else float(v)
            self.sums[k] = self.sums[k] + v if k in self.sums else v
        self.count += 1

    def mean(self) -> dict[str, float]:
        """The scalar metrics averaged over the window's steps (tensors are left out)."""
        n = max(self.count, 1)
        return {k: v / n for k, v in self.sums.items() if not isinstance(v, torch.Tensor)}

    def reset(self) -> None:
        self.sums, self.count = {}, 0

    def state_dict(self) -> dict[str, Any]:
        return {"sums": dict(self.sums), "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sums, self.count = dict(state["sums"]), int(state["count"])
