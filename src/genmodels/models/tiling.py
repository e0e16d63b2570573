"""Tiled application of a convolutional autoencoder to large inputs.

The input is cut into overlapping tiles that are processed one at a time, so peak activation
memory is bounded by the tile size; outputs are cross-faded with a linear ramp across each
overlap (as diffusers' tiled VAE does). Each tile may also be run with ``context`` extra pixels
on every side that are cropped away afterwards (A1111 multidiffusion tiled-VAE padding), so that
the zero padding at a tile's border does not reach the pixels it keeps.

Tiles see only their own pixels, so their GroupNorm statistics differ from the whole image's
(colour shifts between tiles; ``norm_stats="tile"``, diffusers' behaviour and the default). With
``norm_stats="global"`` the statistics of every ``GroupNorm32`` are first recorded in one pass over
the whole input, downscaled to at most ``stats_size`` (A1111 multidiffusion "fast encoder /
decoder" estimate), and every tile normalises with them. When the input fits in ``stats_size``
the recorded statistics are exact and tiles then match the untiled result except for the global
mid-block attention (which sees one tile plus context only), given ``context`` at least the
receptive radius. A downscaled pass is only an estimate (with random weights it measured worse
than per-tile statistics), so "global" is opt-in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genmodels.nn.normalization import GroupNorm32

NORM_STATS = ("global", "tile")


@dataclass(frozen=True)
class TilingConfig:
    """Tile settings in image pixels (latent sizes are these divided by the VAE factor).

    ``min_size``: with ``tiled=None`` an input is tiled automatically when its longer side in
    pixels exceeds it (``None``: only when asked). ``stats_size``: longer side, in pixels, of the
    whole-input pass that records GroupNorm statistics (``norm_stats="global"``).
    """

    tile_size: int = 512
    overlap: int = 64
    context: int = 32
    min_size: int | None = None
    norm_stats: str = "tile"
    stats_size: int = 512

    def __post_init__(self) -> None:
        if self.tile_size <= 0 or not 0 <= self.overlap < self.tile_size or self.context < 0:
            raise ValueError(
                f"expected tile_size > 0, 0 <= overlap < tile_size and context >= 0, got "
                f"tile_size={self.tile_size}, overlap={self.overlap}, context={self.context}"
            )
        if self.norm_stats not in NORM_STATS:
            raise ValueError(f"unknown norm_stats {self.norm_stats!r}; valid: {NORM_STATS}")
        if self.stats_size <= 0:
            raise ValueError(f"expected stats_size > 0, got {self.stats_size}")

    def wants_tiling(self, height: int, width: int) -> bool:
        return self.min_size is not None and max(height, width) > self.min_size


def tile_starts(length: int, tile: int, overlap: int, align: int = 1) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering [0, length); the last one ends at length."""
    if tile >= length:
        return [0]
    stride = max(align, (tile - overlap) // align * align)
    starts = list(range(0, length - tile, stride))
    return starts + [length - tile]


def _ramp(starts: list[int], idx: int, tile: int, scale: float, out_tile: int) -> Tensor:
    """Blend weights (out_tile,) for tile ``idx``: linear ramps across overlaps with neighbours."""
    i = torch.arange(out_tile, dtype=torch.float32) + 0.5
    w = torch.ones(out_tile)
    if idx > 0:
        ov = round((starts[idx - 1] + tile - starts[idx]) * scale)
        w = torch.minimum(w, i / max(ov, 1))
    if idx < len(starts) - 1:
        ov = round((starts[idx] + tile - starts[idx + 1]) * scale)
        w = torch.minimum(w, (out_tile - i) / max(ov, 1))
    return w


class _RecordedStats:
    """``GroupNorm32.stats_hook``: record each layer's own statistics, or return recorded ones."""

    def __init__(self) -> None:
        self.stats: dict[nn.Module, tuple[Tensor, Tensor]] = {}
        self.recording = False

    def __call__(self, norm: GroupNorm32, x: Tensor) -> tuple[Tensor, Tensor] | None:
        if not self.recording:
            return self.stats[norm]
        xg = x.float().reshape(x.shape[0], norm.num_groups, -1)  # (B, G, C/G * H * W)
        var, mean = torch.var_mean(xg, dim=-1, unbiased=False)  # (B, G)
        self.stats[norm] = (mean, var)
        return None


@contextmanager
def _hooked(module: nn.Module | None, hook: _RecordedStats) -> Iterator[None]:
    norms = [m for m in module.modules() if isinstance(m, GroupNorm32)] if module else []
    for m in norms:
        m.stats_hook = hook
    try:
        yield
    finally:
        for m in norms:
            m.stats_hook = None


@torch.no_grad()
def tiled_forward(
    fn: Callable[[Tensor], Tensor],
    x: Tensor,
    *,
    tile: int,
    overlap: int,
    context: int = 0,
    align: int = 1,
    norm_module: nn.Module | None = None,
    stats_size: int | None = None,
) -> Tensor:
    """Apply the spatially resampling ``fn`` to ``x`` (B, C, H, W) tile by tile and blend.

    ``tile``/``overlap``/``context`` are in units of ``x``'s pixels; tile offsets and ``context``
    are multiples of ``align``. With ``norm_module`` the ``GroupNorm32`` layers inside it use
    statistics recorded on ``x`` downscaled to at most ``stats_size`` (module docstring).
    """
    if x.ndim != 4:
        raise ValueError(f"expected input of shape (B, C, H, W), got {tuple(x.shape)}")
    if tile % align or context % align or overlap < 0 or overlap >= tile or context < 0:
        raise ValueError(
            f"expected tile and context >= 0 divisible by {align} and 0 <= overlap < tile, "
            f"got tile={tile}, overlap={overlap}, context={context}"
        )
    H, W = x.shape[-2:]
    th, tw = min(tile, H), min(tile, W)
    ys, xs = tile_starts(H, th, overlap, align), tile_starts(W, tw, overlap, align)
    grid = [(iy, ix) for iy in range(len(ys)) for ix in range(len(xs))]
    hook = _RecordedStats()

    def run(iy: int, ix: int) -> tuple[Tensor, float]:
        y0, x0 = ys[iy], xs[ix]
        ya, xa = max(0, y0 - context), max(0, x0 - context)
        yb, xb = min(H, y0 + th + context), min(W, x0 + tw + context)
        t = fn(x[..., ya:yb, xa:xb])  # (B, C', (yb - ya) * s, (xb - xa) * s)
        scale = t.shape[-1] / (xb - xa)
        cy, cx = round((y0 - ya) * scale), round((x0 - xa) * scale)
        return t[..., cy : cy + round(th * scale), cx : cx + round(tw * scale)], scale

    with _hooked(norm_module, hook):
        if norm_module is not None:
            hook.recording = True
            fn(_downscale(x, stats_size or max(H, W), align))
            hook.recording = False
        out = weight = None
        for iy, ix in grid:
            t, scale = run(iy, ix)
            if out is None:
                out_hw = (round(H * scale), round(W * scale))
                out = x.new_zeros((x.shape[0], t.shape[1], *out_hw), dtype=torch.float32)
                weight = x.new_zeros(out_hw, dtype=torch.float32)
            wy = _ramp(ys, iy, th, scale, t.shape[-2]).to(x.device)
            wx = _ramp(xs, ix, tw, scale, t.shape[-1]).to(x.device)
            w = wy[:, None] * wx[None, :]  # (th * s, tw * s)
            oy, ox = round(ys[iy] * scale), round(xs[ix] * scale)
            out[..., oy : oy + t.shape[-2], ox : ox + t.shape[-1]] += t.float() * w
            weight[oy : oy + t.shape[-2], ox : ox + t.shape[-1]] += w
    return (out / weight).to(x.dtype)


def _downscale(x: Tensor, max_side: int, align: int) -> Tensor:
    H, W = x.shape[-2:]
    if max(H, W) <= max_side:
        return x
    scale = max_side / max(H, W)
    size = [max(align, int(n * scale) // align * align) for n in (H, W)]
    return F.interpolate(x, size=size, mode="area")
