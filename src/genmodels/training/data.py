"""The training images of every task, from its ``data`` section."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from genmodels.data.builtin import build_dataset

from .config import DataConfig

__all__ = ["all_images", "build_task_dataset"]


def build_task_dataset(data: DataConfig) -> Any:
    """The dataset of ``data``: built-in ``digits`` / ``emoji`` or an image ``folder``."""
    return build_dataset(
        data.dataset, size=data.size, path=data.path, crop=data.crop, flip=data.random_flip
    )


def all_images(dataset: Any, n: int | None = None) -> Tensor:
    """The first ``n`` (default all) images (N, C, H, W) of ``dataset``, un-augmented."""
    n = len(dataset) if n is None else min(n, len(dataset))
    if hasattr(dataset, "images"):
        return dataset.images[:n]
    return torch.stack([dataset[i][0] for i in range(n)])  # decoded one by one (a folder)
