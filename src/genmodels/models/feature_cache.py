"""DeepCache (Ma et al. 2023, arXiv:2312.00858): reuse the UNet's deep features across steps.

Adjacent denoising steps change the UNet's high-level features little, so on most steps only a
shallow skip branch is recomputed and the deep part (the rest of the encoder, the middle block and
the decoder down to that branch) is taken from the last full evaluation.

In ldm block units: with ``depth`` K, a *partial* evaluation runs ``input_blocks[:K]`` and
``output_blocks[N-K:]`` (the decoder blocks that consume exactly those K skips), starting from the
cached input of ``output_blocks[N-K]``. K = 1 recomputes conv_in and the last decoder block only
(DeepCache's shallowest branch); larger K recomputes more and stays closer to the exact result.
Depth K is the reference implementation's ``cache_branch_id`` K - 1 (``DeepCacheSDHelper``: its
branch b keeps the first b diffusers down layers after conv_in, which are ldm's
``input_blocks[1:b+1]``, and the up layers that consume their skips).
A *full* evaluation runs everything and refreshes the cache.

The schedule is DeepCache's uniform one: every ``interval``-th UNet evaluation is full (the first
always is). Evaluations are counted, not sampler steps, so a 2-call sampler (Heun, DPM2) refreshes
every ``interval`` calls. A change of input shape (e.g. the guidance cut-off halving the batch)
forces a full evaluation. ``interval`` 1 is exact: every evaluation is full.

One cache serves one sampling run. A timestep above the previous call's (sampling runs go from
high noise to low) starts a new run: the count restarts and that evaluation is full, so a cache
reused across runs never hands one run's features to the next.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

__all__ = ["CachedModel", "DeepCache"]


@dataclass
class DeepCache:
    """The cache of a sampling run; passed to ``UNetModel.forward(..., cache=)``.

    ``calls`` / ``full_calls`` count all evaluations and the full ones (over every run)."""

    interval: int
    depth: int = 1
    calls: int = field(default=0, init=False)
    full_calls: int = field(default=0, init=False)
    _position: int = field(default=0, init=False, repr=False)  # evaluations in this run
    _feature: Tensor | None = field(default=None, init=False, repr=False)
    _key: tuple = field(default=(), init=False, repr=False)
    _level: float | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.interval, bool) or not isinstance(self.interval, int):
            raise ValueError(f"cache interval must be an integer >= 1, got {self.interval!r}")
        if self.interval < 1:
            raise ValueError(f"cache interval must be >= 1, got {self.interval}")
        if isinstance(self.depth, bool) or not isinstance(self.depth, int) or self.depth < 1:
            raise ValueError(f"cache depth must be an integer >= 1, got {self.depth!r}")

    def reset(self) -> None:
        """Start a new sampling run (the counters go on)."""
        self._position, self._feature, self._key, self._level = 0, None, (), None

    def check_depth(self, n_blocks: int) -> None:
        if self.depth >= n_blocks:
            raise ValueError(
                f"cache depth must be below the UNet's {n_blocks} input blocks, got {self.depth}"
            )

    def cached(self, key: tuple, level: float) -> Tensor | None:
        """The deep feature to reuse for this evaluation, or None when it must be full.

        ``key`` identifies what the feature depends on besides the step (input shape, dtype);
        ``level`` is the evaluation's (largest) timestep."""
        if self._level is not None and level > self._level:
            self.reset()  # a new sampling run
        self._level = level
        due = self._position % self.interval == 0
        self._position += 1
        self.calls += 1
        if due or self._feature is None or key != self._key:
            self.full_calls += 1
            return None
        return self._feature

    def store(self, key: tuple, feature: Tensor) -> None:
        self._key, self._feature = key, feature.detach()


class CachedModel(nn.Module):
    """``model(x, t, **cond)`` called with ``cache=`` added: put between a denoiser wrapper and
    the UNet (``with_model(denoiser, CachedModel(denoiser.model, cache))``)."""

    def __init__(self, model: nn.Module, cache: DeepCache) -> None:
        super().__init__()
        self.model, self.cache = model, cache

    def forward(self, x: Tensor, t: Tensor, **cond: Any) -> Tensor:
        return self.model(x, t, cache=self.cache, **cond)
