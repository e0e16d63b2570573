"""Orders in which a GPT reads a (H, W) code grid, as in taming-transformers' permuters.

A permuter re-orders raster-order codes (B, H*W) into sequence order and back:
``seq = p(codes)``, ``codes = p(seq, reverse=True)``. ``forward_shuffle_idx[k]`` is the raster
position of the k-th token of the sequence; ``backward_shuffle_idx`` is its inverse. Both are
buffers with taming's names, so a taming ``permuter.*`` state dict loads with ``strict=True``.

* identity: raster order (row by row).
* z_curve: Morton / Z-order (Morton 1966): position (i, j) goes to the integer whose bits
  interleave those of i and j, j in the even bits and i in the odd bits, as taming's
  ``mortonify``. Any H, W is accepted (positions are sorted by their Morton code).
* spiral_in: clockwise from the top-left corner towards the centre; spiral_out: its reverse,
  from the centre outwards to the top-left corner.
* random: a fixed permutation from ``numpy.random.RandomState(seed).permutation`` (taming's
  ``RandomPermuter`` with its default seed 1).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "Permuter",
    "IdentityPermuter",
    "morton_code",
    "z_curve_order",
    "spiral_in_order",
    "make_permuter",
    "PERMUTERS",
]


class Permuter(nn.Module):
    """Applies a fixed order ``order`` (L,) (a permutation of 0..L-1) to dim 1 of a sequence."""

    def __init__(self, order: Tensor | np.ndarray | list[int]) -> None:
        super().__init__()
        order = torch.as_tensor(np.asarray(order), dtype=torch.long)
        if order.ndim != 1 or not torch.equal(order.sort().values, torch.arange(order.numel())):
            raise ValueError(f"order must be a permutation of 0..{order.numel() - 1}")
        self.register_buffer("forward_shuffle_idx", order)
        self.register_buffer("backward_shuffle_idx", torch.argsort(order))

    def forward(self, x: Tensor, reverse: bool = False) -> Tensor:
        """(B, L, ...) raster -> sequence order, or back with ``reverse=True``."""
        if x.ndim < 2 or x.shape[1] != self.forward_shuffle_idx.numel():
            raise ValueError(
                f"expected x of shape (B, {self.forward_shuffle_idx.numel()}, ...), "
                f"got {tuple(x.shape)}"
            )
        idx = self.backward_shuffle_idx if reverse else self.forward_shuffle_idx
        return x[:, idx]


class IdentityPermuter(nn.Module):
    """Raster order; holds no buffers (like taming's ``Identity``)."""

    def forward(self, x: Tensor, reverse: bool = False) -> Tensor:
        return x


def morton_code(i: int, j: int) -> int:
    """Interleave the bits of (i, j): bit b of j -> bit 2b, bit b of i -> bit 2b+1."""
    z = 0
    for b in range(max(i.bit_length(), j.bit_length())):
        z |= ((j >> b) & 1) << (2 * b) | ((i >> b) & 1) << (2 * b + 1)
    return z


def z_curve_order(h: int, w: int) -> list[int]:
    """Raster positions sorted by Morton code: the Z-order sequence of an (h, w) grid."""
    codes = [morton_code(i, j) for i in range(h) for j in range(w)]
    return sorted(range(h * w), key=codes.__getitem__)


def spiral_in_order(h: int, w: int) -> list[int]:
    """Raster positions visited clockwise from the top-left corner, ring by ring inwards."""
    top, bottom, left, right = 0, h - 1, 0, w - 1
    order: list[int] = []
    while top <= bottom and left <= right:
        order += [top * w + j for j in range(left, right + 1)]
        order += [i * w + right for i in range(top + 1, bottom + 1)]
        if top < bottom:
            order += [bottom * w + j for j in range(right - 1, left - 1, -1)]
        if left < right:
            order += [i * w + left for i in range(bottom - 1, top, -1)]
        top, bottom, left, right = top + 1, bottom - 1, left + 1, right - 1
    return order


def _order(name: str, h: int, w: int, seed: int) -> list[int]:
    if name == "z_curve":
        return z_curve_order(h, w)
    if name == "spiral_in":
        return spiral_in_order(h, w)
    if name == "spiral_out":
        return spiral_in_order(h, w)[::-1]
    return np.random.RandomState(seed).permutation(h * w).tolist()


PERMUTERS = ("identity", "z_curve", "spiral_in", "spiral_out", "random")


def make_permuter(name: str, h: int, w: int, seed: int = 1) -> nn.Module:
    """The permuter ``name`` (one of :data:`PERMUTERS`) for an (h, w) code grid."""
    if name not in PERMUTERS:
        raise ValueError(f"unknown permuter {name!r}; valid names: {', '.join(PERMUTERS)}")
    if h < 1 or w < 1:
        raise ValueError(f"grid size must be positive, got ({h}, {w})")
    if name == "identity":
        return IdentityPermuter()
    return Permuter(_order(name, h, w, seed))
