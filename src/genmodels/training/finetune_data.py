"""The images of a fine-tuning run: a captioned folder (``data/folder.py``), kohya repeat
folders, aspect-ratio buckets and the batch of every step.

Items are images counted with their repeats (``10_concept/``: ten items per image); step k's
global batch is a pure function of (seed, k): epoch k // batches_per_epoch of
``bucket_batches``, so every batch is one bucket, every item is used each epoch, and resumed or
data-parallel runs draw the same rows.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

from torch import Tensor

from genmodels.data.buckets import (
    CropInfo,
    assign_bucket,
    bucket_batches,
    crop_to_bucket,
    make_buckets,
)
from genmodels.data.folder import ImageFolderDataset, kohya_repeats
from genmodels.data.transforms import load_rgb

from .finetune_config import FinetuneRunConfig

__all__ = ["FinetuneData"]


class FinetuneData:
    """Images, captions, repeats and buckets of ``cfg.data.path``; errors name the file."""

    def __init__(self, cfg: FinetuneRunConfig) -> None:
        d, b = cfg.data, cfg.buckets
        root = Path(d.path)
        self.folder = ImageFolderDataset(root, d.size)  # scan: sizes, captions, bad files
        self.crop, self.flip = d.crop, d.random_flip
        self.buckets = (make_buckets(d.size, b.step, b.min_size, b.max_size) if b.enabled
                        else [(d.size, d.size)])  # fmt: skip
        smallest = min(min(bucket) for bucket in self.buckets)
        for path, (w, h) in zip(self.folder.files, self.folder.sizes):
            if min(w, h) < smallest:
                raise ValueError(
                    f"{path}: {w}x{h} px is smaller than the smallest bucket side {smallest} px; "
                    "remove or enlarge it, or lower data.size / buckets.min_size"
                )
        index = {bucket: i for i, bucket in enumerate(self.buckets)}
        self.bucket_of_image = [index[assign_bucket(s, self.buckets)] for s in self.folder.sizes]
        self.repeats = [kohya_repeats(p, root) for p in self.folder.files]
        self.items = [i for i, r in enumerate(self.repeats) for _ in range(r)]
        self._bucket_of_item = [self.bucket_of_image[i] for i in self.items]
        self._epoch: tuple[int, int, list[list[int]]] | None = None

    @property
    def captions(self) -> list[str]:
        return self.folder.captions

    def __len__(self) -> int:
        """Images (without repeats)."""
        return len(self.folder.files)

    def batches_per_epoch(self, batch_size: int) -> int:
        counts = Counter(self._bucket_of_item)
        return sum(math.ceil(n / batch_size) for n in counts.values())

    def batch(self, batch_size: int, seed: int, step: int) -> list[int]:
        """Image indices of step ``step``'s global batch (all in one bucket)."""
        epoch, position = divmod(step, self.batches_per_epoch(batch_size))
        if self._epoch is None or self._epoch[:2] != (epoch, batch_size):
            self._epoch = (
                epoch,
                batch_size,
                bucket_batches(self._bucket_of_item, batch_size, seed, epoch),
            )
        return [self.items[i] for i in self._epoch[2][position]]  # fmt: skip

    def bucket(self, image: int) -> tuple[int, int]:
        return self.buckets[self.bucket_of_image[image]]

    def load(self, image: int, seed: int, flip: bool | None = None) -> tuple[Tensor, CropInfo]:
        """Image ``image`` cropped to its bucket (``flip``: forced orientation; None: random
        from ``seed`` when ``data.random_flip``); an image that fails to decode raises
        ``OSError`` after being recorded in ``folder.bad``."""
        path = self.folder.files[image]
        try:
            img = load_rgb(str(path))
        except Exception as exc:  # PIL raises many types for broken files
            self.folder._skip(path, exc)
            raise OSError(f"{path}: cannot be decoded ({exc})") from exc
        if flip is None:
            return crop_to_bucket(img, self.bucket(image), self.crop, self.flip, seed)
        x, info = crop_to_bucket(img, self.bucket(image), self.crop, False, seed)
        if flip:
            x, info = x.flip(-1), CropInfo(info.original_size, info.crop_top_left,
                                           info.target_size, True)  # fmt: skip
        return x, info

    def tag_frequency(self) -> str:
        """kohya's ``ss_tag_frequency``: {folder name: {tag: count}} as JSON (with repeats
        counted once, as kohya)."""
        root = self.folder.root
        freq: dict[str, Counter] = {}
        for path, caption in zip(self.folder.files, self.captions):
            parts = path.relative_to(root).parts
            key = parts[0] if len(parts) > 1 else root.name
            tags = [t.strip() for t in caption.split(",") if t.strip()]
            freq.setdefault(key, Counter()).update(tags)
        return json.dumps({k: dict(v) for k, v in freq.items()})
