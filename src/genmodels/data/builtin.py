"""Dataset by name: ``digits``, ``emoji`` (built in, offline) or an image ``folder``."""

from __future__ import annotations

from typing import Any

from .digits import load_digits_tensor
from .tensor_dataset import ImageTensorDataset

__all__ = ["DATASETS", "build_dataset"]

DATASETS = ("digits", "emoji", "folder")


def build_dataset(name: str, *, size: int, path: str | None = None, **options: Any) -> Any:
    """The dataset called ``name`` at ``size`` px: items (image (C, H, W) in [-1, 1], label).

    ``options``: ``crop`` ("center" / "random") and ``flip`` (bool) for folders.
    """
    if name == "digits":
        images, labels = load_digits_tensor(size)
        return ImageTensorDataset(images, labels, [str(i) for i in range(10)])
    if name == "emoji":
        from .emoji import load_emoji_dataset

        return load_emoji_dataset(size=size)
    if name == "folder":
        if path is None:
            raise ValueError("the 'folder' dataset needs data.path (a directory of images)")
        from .folder import ImageFolderDataset

        return ImageFolderDataset(
            path, size, crop=options.get("crop", "center"), flip=options.get("flip", False)
        )
    raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}")
