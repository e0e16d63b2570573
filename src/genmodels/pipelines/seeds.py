"""Seeds: the range every part agrees on, so whatever is written can be read and re-run.

Image i of a batch uses ``seed + i`` (A1111). A CPU ``torch.Generator`` takes any seed in
[0, 2**64 - 1], so that is the range accepted everywhere (command line, Python API,
``--from-png``); a batch whose last seed would leave it is refused up front rather than written
with a seed that cannot be read back. A random seed (-1 / None) is drawn from [0, 2**32 - 1],
as A1111 draws them.
"""

from __future__ import annotations

import random

__all__ = ["MAX_SEED", "RANDOM_SEED_MAX", "check_seed", "resolve_seeds"]

MAX_SEED = 2**64 - 1
RANDOM_SEED_MAX = 2**32 - 1


def check_seed(seed: object, count: int = 1, what: str = "seed") -> int:
    """``seed`` when it and ``seed + count - 1`` are integers in [0, MAX_SEED]."""
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"{what} must be an integer in [0, 2**64 - 1] (-1: random), got {seed!r}")
    if seed + count - 1 > MAX_SEED:
        raise ValueError(
            f"{what} {seed} with {count} images would go past the largest seed 2**64 - 1; "
            f"use a seed <= {MAX_SEED - count + 1}"
        )
    return seed


def resolve_seeds(seed: int | None, batch_size: int) -> list[int]:
    """[seed, seed + 1, ...]; seed None or -1 draws a random one."""
    if seed is None or seed == -1:
        seed = random.randint(0, RANDOM_SEED_MAX)
    seed = check_seed(seed, batch_size)
    return [seed + i for i in range(batch_size)]
