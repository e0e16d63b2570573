"""In-memory image datasets and the deterministic, resumable batch order."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["ImageTensorDataset", "batch_indices"]


class ImageTensorDataset:
    """Images (N, C, H, W) in [-1, 1] with optional int64 labels (N,) held in memory."""

    def __init__(
        self,
        images: Tensor,
        labels: Tensor | None = None,
        class_names: list[str] | None = None,
        captions: list[str] | None = None,
    ) -> None:
        if images.ndim != 4:
            raise ValueError(f"images must have shape (N, C, H, W), got {tuple(images.shape)}")
        if labels is not None and labels.shape != (images.shape[0],):
            raise ValueError(
                f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}"
            )
        self.images = images
        self.labels = labels
        self.class_names = class_names
        self.captions = captions

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        label = -1 if self.labels is None else int(self.labels[index])
        return self.images[index], label

    def batch(self, indices: Tensor) -> tuple[Tensor, Tensor | None]:
        """(images (B, C, H, W), labels (B,) or None) for ``indices``."""
        labels = None if self.labels is None else self.labels[indices]
        return self.images[indices], labels


def batch_indices(n: int, batch_size: int, seed: int, k: int) -> Tensor:
    """Indices of batch ``k`` (0-based) in a seeded shuffled order, epoch after epoch.

    Each epoch is a fresh permutation (seed + epoch) cut into ``n // batch_size`` full batches
    (the remainder is dropped), so batch k is a pure function of (n, batch_size, seed, k): the
    data position of a run is just k, and a resumed run reads exactly what it would have read.
    """
    if batch_size > n:
        raise ValueError(f"batch size {batch_size} exceeds the dataset size {n}")
    per_epoch = n // batch_size
    epoch, j = divmod(k, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    return perm[j * batch_size : (j + 1) * batch_size]
