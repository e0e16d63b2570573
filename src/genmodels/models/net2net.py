"""Taming's Net2Net token layout: a GPT over the codes of a VQGAN, with its conditioning.

The image vocabulary is the ``n_codes`` code indices; conditioning tokens follow it:

* class-conditional: token ``n_codes + label`` (``class_prefix(labels, offset=n_codes)``);
* unconditional: one SOS token ``n_codes``;
* image-conditional (taming's cond stage): the raster-order codes ``c`` of a conditioning
  image derived from the target (:func:`make_cond_image`: a low-resolution or an edge map),
  encoded by a cond-stage VQGAN (the first stage itself by default), as tokens
  ``n_codes + c``.

So ``vocab_size = n_codes + max(n_classes, 1)`` (or ``n_codes + cond_n_codes``) and
``block_size = n_prefix + h * w - 1`` (the prefix plus all codes but the last). Codes are put
in the order of a permuter (identity = raster, z_curve, ...) before the GPT sees them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from genmodels.configs.gpt import GPTConfig

from .gpt import class_prefix, sos_prefix
from .vqgan import VQModel

__all__ = ["COND_IMAGES", "TransformerMeta", "encode_codes", "make_cond_image", "make_prefix"]


COND_IMAGES = ("lowres", "edges")
COND_STAGES = ("first_stage", "cond_vqgan")


@dataclass
class TransformerMeta:
    """What sampling needs besides the weights: the token layout and the code grid.

    ``cond_image`` ("lowres" / "edges", None for class / SOS prefixes) conditions on the
    ``cond_grid`` codes of a ``cond_size`` px conditioning image, encoded by the first stage
    or by ``cond_vqgan.*`` beside it (``cond_stage``); ``cond_n_codes`` is that VQGAN's
    vocabulary.

    ``cond_offset`` is the id of the first conditioning token (SOS, class 0 or cond code 0);
    None puts them after the image codes (``n_codes``, genmodels' layout). Imported taming
    models use 0 or their ``sos_token``: their conditioning tokens share ids with image codes.
    """

    gpt: GPTConfig
    n_codes: int
    n_classes: int  # 0 = unconditional (SOS token) or image-conditional
    grid: tuple[int, int]
    permuter: str = "identity"
    cond_image: str | None = None
    cond_size: int = 0
    cond_grid: tuple[int, int] = (0, 0)
    cond_n_codes: int = 0
    cond_stage: str = "first_stage"
    cond_offset: int | None = None

    def __post_init__(self) -> None:
        self.grid, self.cond_grid = tuple(self.grid), tuple(self.cond_grid)
        if self.cond_image is not None:
            if self.cond_image not in COND_IMAGES or self.cond_stage not in COND_STAGES:
                raise ValueError(
                    f"cond_image must be one of {COND_IMAGES} and cond_stage one of "
                    f"{COND_STAGES}, got {self.cond_image!r} and {self.cond_stage!r}"
                )
            if self.n_classes or self.cond_n_codes < 1 or min(self.cond_grid) < 1:
                raise ValueError(
                    "an image-conditional model needs n_classes=0, cond_n_codes >= 1 and a "
                    f"cond_grid, got {self.n_classes}, {self.cond_n_codes}, {self.cond_grid}"
                )
        if self.cond_offset is not None and self.cond_offset < 0:
            raise ValueError(f"cond_offset must be >= 0, got {self.cond_offset}")
        n_cond = self.cond_n_codes if self.cond_image else max(self.n_classes, 1)
        need = max(self.n_codes, self.cond_start + n_cond)
        if self.gpt.vocab_size < need:
            raise ValueError(
                f"vocab_size {self.gpt.vocab_size} < {need} tokens ({self.n_codes} image codes, "
                f"{n_cond} conditioning tokens from id {self.cond_start})"
            )
        if self.gpt.block_size < self.n_prefix + self.grid[0] * self.grid[1] - 1:
            raise ValueError(
                f"block_size {self.gpt.block_size} < {self.n_prefix} conditioning tokens + "
                f"{self.grid[0] * self.grid[1]} codes per image - 1"
            )

    @property
    def cond_start(self) -> int:
        """Id of the first conditioning token."""
        return self.n_codes if self.cond_offset is None else self.cond_offset

    @property
    def n_prefix(self) -> int:
        """Conditioning tokens before the codes."""
        return self.cond_grid[0] * self.cond_grid[1] if self.cond_image else 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"grid": list(self.grid), "cond_grid": list(self.cond_grid)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TransformerMeta:
        return cls(**(d | {"gpt": GPTConfig(**d["gpt"])}))


_SOBEL = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])


def make_cond_image(images: Tensor, kind: str, size: int, channels: int | None = None) -> Tensor:
    """The conditioning image of each target (N, C, H, W) in [-1, 1] -> (N, channels, size, size).

    * ``lowres``: area-averaged to ``size`` px (taming's ``downsample_cond_size``);
    * ``edges``: Sobel gradient magnitude of the grey image, scaled to [-1, 1] per image,
      then area-resized to ``size`` px.

    ``channels`` (default C): grey is repeated to RGB, RGB averaged to grey.
    """
    if kind not in COND_IMAGES:
        raise ValueError(f"unknown cond_image {kind!r}; valid: {COND_IMAGES}")
    if images.ndim != 4 or size < 1:
        raise ValueError(f"expected images (N, C, H, W) and size >= 1, got {images.shape}, {size}")
    x = images.float()
    if kind == "edges":
        grey = F.pad(x.mean(1, keepdim=True), (1, 1, 1, 1), mode="replicate")
        kx = _SOBEL.to(x.device).view(1, 1, 3, 3)
        gx, gy = F.conv2d(grey, kx), F.conv2d(grey, kx.transpose(2, 3))
        mag = torch.sqrt(gx.square() + gy.square())  # (N, 1, H, W)
        x = 2 * mag / mag.amax((1, 2, 3), keepdim=True).clamp(min=1e-8) - 1
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="area")
    channels = images.shape[1] if channels is None else channels
    if x.shape[1] != channels:
        if x.shape[1] not in (1, 3) or channels not in (1, 3):
            raise ValueError(f"cannot turn {x.shape[1]}-channel images into {channels} channels")
        x = x.mean(1, keepdim=True) if channels == 1 else x.expand(-1, 3, -1, -1)
    return x.contiguous()


@torch.no_grad()
def encode_codes(vq: VQModel, images: Tensor, batch_size: int = 256) -> Tensor:
    """Code indices (N, h, w) of images (N, C, H, W)."""
    vq.eval()
    return torch.cat(
        [
            vq.encode_to_indices(images[i : i + batch_size])
            for i in range(0, len(images), batch_size)
        ]
    )


def make_prefix(
    meta: TransformerMeta, labels: Tensor | None, batch: int, cond_codes: Tensor | None = None
) -> Tensor:
    """Conditioning tokens, from id ``s = meta.cond_start`` (``n_codes`` unless imported): class
    ``s + label`` or the SOS token ``s`` (B, 1), or the codes of the conditioning image
    (B, ch, cw) as tokens ``s + c`` (B, ch*cw)."""
    if meta.cond_image is not None:
        shape = (batch, *meta.cond_grid)
        if cond_codes is None or tuple(cond_codes.shape) != shape:
            got = None if cond_codes is None else tuple(cond_codes.shape)
            raise ValueError(f"an image-conditional model needs cond codes {shape}, got {got}")
        if int(cond_codes.min()) < 0 or int(cond_codes.max()) >= meta.cond_n_codes:
            raise ValueError(f"cond codes must lie in [0, {meta.cond_n_codes})")
        return cond_codes.reshape(batch, -1).long() + meta.cond_start
    if meta.n_classes == 0:
        return sos_prefix(batch, meta.cond_start)
    if labels is None:
        raise ValueError(f"a class-conditional model ({meta.n_classes} classes) needs labels")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= meta.n_classes):
        raise ValueError(f"class labels must lie in [0, {meta.n_classes}), got {labels.tolist()}")
    return class_prefix(labels, offset=meta.cond_start)
