"""Caption augmentation of fine-tuning runs (kohya sd-scripts ``shuffle_caption`` /
``keep_tokens``): the comma-separated tags of a caption in a random order, the first
``keep_tokens`` tags staying in front (a trigger word usually)."""

from __future__ import annotations

import random

__all__ = ["shuffle_tags"]


def shuffle_tags(caption: str, keep_tokens: int = 0, seed: int = 0) -> str:
    """``caption``'s comma-separated tags shuffled (randomness from ``seed``), the first
    ``keep_tokens`` kept in place; joined with ", " as kohya does."""
    tags = [t.strip() for t in caption.split(",")]
    tags = [t for t in tags if t]
    if len(tags) - keep_tokens < 2:
        return ", ".join(tags)
    head, tail = tags[:keep_tokens], tags[keep_tokens:]
    random.Random(seed).shuffle(tail)
    return ", ".join(head + tail)
