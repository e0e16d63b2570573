"""VQGAN configs and presets (taming-transformers ``ddconfig`` + ``n_embed`` / ``embed_dim``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

__all__ = ["QUANTIZERS", "VQConfig", "PRESETS", "get_vqgan_config"]

QUANTIZERS = ("vq", "ema", "gumbel", "fsq")


@dataclass(frozen=True)
class VQConfig:
    """Settings of :class:`~genmodels.models.vqgan.VQModel`; names follow taming's ``ddconfig``.

    ``quantizer``: "vq" (gradient-trained codebook), "ema" (EMA codebook), "gumbel"
    (Gumbel-softmax) or "fsq" (finite scalar quantisation with ``fsq_levels``; then
    ``n_embed = prod(levels)`` and ``embed_dim = len(levels)`` are implied).
    ``legacy=True`` puts beta on the codebook term, as taming's released checkpoints were
    trained (the default puts it on the commitment term, as the VQ-VAE paper).
    ``remap`` (a ``.npy`` path or the list of used code indices) and ``unknown_index``
    ("random", "extra" or an int) restrict the indices to those codes, as taming's ``remap``;
    the index vocabulary (``VQModel.n_codes``) is then len(used) (+1 for "extra").
    """

    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.0
    in_channels: int = 3
    out_ch: int = 3
    resolution: int = 256
    z_channels: int = 256
    num_groups: int = 32
    n_embed: int = 1024
    embed_dim: int = 256
    quantizer: str = "vq"
    beta: float = 0.25
    legacy: bool = False  # the taming presets set True
    l2_normalize: bool = False
    ema_decay: float = 0.99
    kmeans_init: bool = False
    dead_code_steps: int = 0
    kl_weight: float = 5e-4  # Gumbel KL weight (taming's default)
    fsq_levels: tuple[int, ...] = (8, 5, 5, 5)
    remap: str | tuple[int, ...] | None = None
    unknown_index: str | int = "random"

    def __post_init__(self) -> None:
        object.__setattr__(self, "ch_mult", tuple(self.ch_mult))
        object.__setattr__(self, "attn_resolutions", tuple(self.attn_resolutions))
        object.__setattr__(self, "fsq_levels", tuple(self.fsq_levels))
        if isinstance(self.remap, list | tuple):
            object.__setattr__(self, "remap", tuple(int(i) for i in self.remap))
        if self.quantizer not in QUANTIZERS:
            raise ValueError(f"unknown quantizer {self.quantizer!r}; valid: {QUANTIZERS}")
        for name in ("ch", "in_channels", "out_ch", "z_channels", "n_embed", "embed_dim"):
            if getattr(self, name) <= 0:
                raise ValueError(f"expected {name} > 0, got {getattr(self, name)}")
        widths = {self.ch * m for m in self.ch_mult}
        if any(w % self.num_groups for w in widths):
            raise ValueError(
                f"channel widths {sorted(widths)} must be divisible by num_groups={self.num_groups}"
            )
        if self.remap is not None and self.quantizer == "fsq":
            raise ValueError("remap applies to a codebook; FSQ has none")
        if self.quantizer == "fsq":
            object.__setattr__(self, "embed_dim", len(self.fsq_levels))
            n = 1
            for level in self.fsq_levels:
                n *= level
            object.__setattr__(self, "n_embed", n)

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    def latent_shape(self, size: int) -> tuple[int, int]:
        """Code grid (h, w) of a ``size`` x ``size`` image."""
        f = self.downsample_factor
        if size % f:
            raise ValueError(f"image size {size} is not divisible by the downsample factor {f}")
        return size // f, size // f

    def _common(self) -> dict[str, Any]:
        keys = ("ch", "ch_mult", "num_res_blocks", "attn_resolutions", "dropout", "resolution")
        return {k: getattr(self, k) for k in keys} | {
            "z_channels": self.z_channels,
            "num_groups": self.num_groups,
        }

    def encoder_kwargs(self) -> dict[str, Any]:
        return self._common() | {"in_channels": self.in_channels, "double_z": False}

    def decoder_kwargs(self) -> dict[str, Any]:
        return self._common() | {"out_ch": self.out_ch}

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VQConfig:
        valid = {f.name for f in fields(cls)}
        unknown = set(d) - valid
        if unknown:
            raise ValueError(f"unknown VQConfig keys {sorted(unknown)}; valid: {sorted(valid)}")
        return cls(**d)


# taming's ``vqgan_imagenet_f16_1024`` (configs/model.yaml): f16, 1024 codes of dim 256, with
# beta on the codebook term as its released weights were trained (``legacy``).
IMAGENET_F16_1024 = VQConfig(legacy=True)
# taming's ``vqgan_imagenet_f16_16384``: the same network with 16384 codes.
IMAGENET_F16_16384 = replace(IMAGENET_F16_1024, n_embed=16384)
# taming's ``vqgan_gumbel_f8_8192`` (GumbelVQ, configs/model.yaml): f8, 8192 codes, KL 1e-8.
GUMBEL_F8_8192 = replace(
    IMAGENET_F16_1024,
    ch_mult=(1, 1, 2, 4),
    attn_resolutions=(32,),
    n_embed=8192,
    quantizer="gumbel",
    kl_weight=1e-8,
)
# Tests: f4 on 16 px, 1 channel, 32 codes of dim 8.
TINY = VQConfig(
    ch=16,
    ch_mult=(1, 2, 2),
    num_res_blocks=1,
    attn_resolutions=(),
    in_channels=1,
    out_ch=1,
    resolution=16,
    z_channels=8,
    num_groups=8,
    n_embed=32,
    embed_dim=8,
    legacy=False,
)
# Digits demo: 16 px grey digits -> 4x4 codes from 64 l2-normalised EMA codes with k-means
# start and dead-code restart (a restart rewrites the codebook inside forward, which only an
# EMA codebook - not trained by gradient - allows).
DIGITS = replace(
    TINY,
    quantizer="ema",
    z_channels=32,
    embed_dim=16,
    n_embed=64,
    l2_normalize=True,
    kmeans_init=True,
    dead_code_steps=20,
)
# Emoji demo: 32 px RGB -> 8x8 codes.
EMOJI = replace(DIGITS, in_channels=3, out_ch=3, resolution=32, ch_mult=(1, 2, 2), n_embed=128)

PRESETS: dict[str, VQConfig] = {
    "imagenet_f16_1024": IMAGENET_F16_1024,
    "imagenet_f16_16384": IMAGENET_F16_16384,
    "gumbel_f8_8192": GUMBEL_F8_8192,
    "tiny": TINY,
    "digits": DIGITS,
    "emoji": EMOJI,
}


def get_vqgan_config(name: str, **overrides: Any) -> VQConfig:
    """Return preset ``name`` (see ``PRESETS``), optionally with fields replaced."""
    if name not in PRESETS:
        raise ValueError(f"unknown VQGAN preset {name!r}; valid: {sorted(PRESETS)}")
    return replace(PRESETS[name], **overrides) if overrides else PRESETS[name]
