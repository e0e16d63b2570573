"""Which rows each optimiser step trains on, the same for one process, many ranks and resumes.

Step k's global batch (``batch_indices``: a seeded permutation per epoch) and its randomness
(``step_generator(seed, k)``) are pure functions of k, so a resumed run and a DDP run draw
exactly what one uninterrupted process draws. Each rank takes its rows of the global batch,
split into ``grad_accum`` micro-batches (``micro_batches``).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from torch import Tensor

from genmodels.data.tensor_dataset import batch_indices

from .distributed import DistInfo

__all__ = ["BatchLoader", "batch_indices", "micro_batches", "step_generator"]


def step_generator(seed: int, step: int) -> torch.Generator:
    """The CPU generator of step ``step``'s randomness (noise, sigma, dropout, crops)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) % 2**63)


def micro_batches(global_batch: int, dist: DistInfo, grad_accum: int) -> list[slice]:
    """This rank's rows of a global batch, as ``grad_accum`` micro-batch slices."""
    world = dist.world_size
    if global_batch % (world * grad_accum):
        raise ValueError(
            f"data.batch_size={global_batch} must be divisible by world size {world} x "
            f"optim.grad_accum={grad_accum}"
        )
    local = global_batch // world
    micro = local // grad_accum
    first = dist.rank * local
    return [slice(first + m * micro, first + (m + 1) * micro) for m in range(grad_accum)]


class BatchLoader:
    """Rows of a dataset as tensors: in-memory datasets by ``dataset.batch(indices)``, others
    decoded item by item (in a thread pool of ``num_workers``), each item's augmentation
    seeded by (seed, step, index) so it is reproducible."""

    def __init__(self, dataset: Any, seed: int, num_workers: int = 0) -> None:
        self.dataset = dataset
        self.seed = seed
        self.pool = ThreadPoolExecutor(num_workers) if num_workers > 0 else None

    def __len__(self) -> int:
        return len(self.dataset)

    def indices(self, global_batch: int, step: int) -> Tensor:
        return batch_indices(len(self.dataset), global_batch, self.seed, step)

    def load(self, indices: Tensor, step: int) -> tuple[Tensor, Tensor]:
        """Images (B, C, H, W) and labels (B,) (-1 where unlabelled) of ``indices``."""
        if hasattr(self.dataset, "batch"):  # in memory
            x, y = self.dataset.batch(indices)
            if y is None:
                y = torch.full((len(indices),), -1, dtype=torch.long)
            return x, y
        base = (self.seed * 1_000_003 + step) * 1_000_003
        keys = [(int(i), base + int(i)) for i in indices]
        if self.pool is not None:
            items = list(self.pool.map(self.dataset.__getitem__, keys))
        else:
            items = [self.dataset[key] for key in keys]
        x = torch.stack([it[0] for it in items])
        return x, torch.tensor([it[1] for it in items], dtype=torch.long)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=False)
