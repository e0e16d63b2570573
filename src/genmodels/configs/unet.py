"""UNet configuration and the named presets (SD 1.x / 2.x / XL plus small ones for tests and demos).

Values follow the original ``model.params.unet_config.params`` of the CompVis / Stability YAML files
(``v1-inference.yaml``, ``v2-inference(-v).yaml``, ``sd_xl_base.yaml``, ``sd_xl_refiner.yaml``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

PredictionType = Literal["eps", "v", "x0"]


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of :class:`genmodels.models.unet.UNetModel` (ldm/sgm ``UNetModel`` options).

    ``attention_resolutions`` holds downsampling factors ``ds`` (1, 2, 4, ...) at which a
    SpatialTransformer follows each ResBlock. Heads: either ``num_heads`` (fixed count, SD 1.x) or
    ``num_head_channels`` (fixed head width, SD 2.x / XL). ``num_classes="sequential"`` with
    ``adm_in_channels`` is SDXL's vector conditioning ``y``; an int gives a class-label embedding.
    ``prediction_type`` is not used by the network; it records what the weights predict.
    """

    in_channels: int = 4
    out_channels: int = 4
    model_channels: int = 320
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int | tuple[int, ...] = 2
    attention_resolutions: tuple[int, ...] = (4, 2, 1)
    num_heads: int = -1
    num_head_channels: int = -1
    transformer_depth: int | tuple[int, ...] = 1
    transformer_depth_middle: int | None = None
    context_dim: int | None = None
    use_linear_in_transformer: bool = False
    disable_self_attentions: tuple[bool, ...] | None = None
    disable_middle_self_attn: bool = False
    num_classes: int | Literal["sequential"] | None = None
    adm_in_channels: int | None = None
    use_scale_shift_norm: bool = False
    resblock_updown: bool = False
    conv_resample: bool = True
    dropout: float = 0.0
    use_checkpoint: bool = False
    upcast_attention: bool = False
    prediction_type: PredictionType = "eps"

    def __post_init__(self) -> None:
        levels = len(self.channel_mult)
        if levels < 1:
            raise ValueError("UNetConfig: channel_mult must have at least one level")
        for name in ("num_res_blocks", "transformer_depth", "disable_self_attentions"):
            value = getattr(self, name)
            if isinstance(value, tuple) and len(value) != levels:
                raise ValueError(
                    f"UNetConfig: {name} has {len(value)} entries, expected one per level "
                    f"({levels}, from channel_mult={self.channel_mult})"
                )
        if (self.num_heads == -1) == (self.num_head_channels == -1):
            raise ValueError("UNetConfig: set exactly one of num_heads or num_head_channels")
        for mult in self.channel_mult:
            ch = mult * self.model_channels
            if ch % 32:
                raise ValueError(f"UNetConfig: channels {ch} must be divisible by 32 (GroupNorm)")
            if self.num_head_channels != -1 and ch % self.num_head_channels:
                raise ValueError(
                    f"UNetConfig: channels {ch} not divisible by num_head_channels="
                    f"{self.num_head_channels}"
                )
            if self.num_heads != -1 and ch % self.num_heads:
                raise ValueError(f"UNetConfig: channels {ch} not divisible by num_heads")
        if self.num_classes == "sequential" and self.adm_in_channels is None:
            raise ValueError("UNetConfig: num_classes='sequential' requires adm_in_channels")
        if self.num_classes is not None and not (
            self.num_classes == "sequential" or isinstance(self.num_classes, int)
        ):
            raise ValueError(
                f"UNetConfig: num_classes must be an int, 'sequential' or None, "
                f"got {self.num_classes!r}"
            )
        if self.prediction_type not in ("eps", "v", "x0"):
            raise ValueError(
                f"UNetConfig: prediction_type must be 'eps', 'v' or 'x0', "
                f"got {self.prediction_type!r}"
            )

    @property
    def levels(self) -> int:
        return len(self.channel_mult)

    def res_blocks(self, level: int) -> int:
        n = self.num_res_blocks
        return n[level] if isinstance(n, tuple) else n

    def depth(self, level: int) -> int:
        d = self.transformer_depth
        return d[level] if isinstance(d, tuple) else d

    @property
    def middle_depth(self) -> int:
        """sgm default: the last level's transformer depth."""
        if self.transformer_depth_middle is not None:
            return self.transformer_depth_middle
        return self.depth(self.levels - 1)

    def has_attention(self, level: int) -> bool:
        """Whether the blocks of ``level`` (downsampling factor ``2**level``) hold a transformer."""
        return 2**level in self.attention_resolutions and self.depth(level) > 0

    def self_attn_disabled(self, level: int) -> bool:
        return bool(self.disable_self_attentions and self.disable_self_attentions[level])

    def heads(self, channels: int) -> tuple[int, int]:
        """(n_heads, d_head) for a transformer on ``channels`` channels."""
        if self.num_head_channels != -1:
            return channels // self.num_head_channels, self.num_head_channels
        return self.num_heads, channels // self.num_heads


_SD1 = UNetConfig(
    in_channels=4,
    out_channels=4,
    model_channels=320,
    channel_mult=(1, 2, 4, 4),
    num_res_blocks=2,
    attention_resolutions=(4, 2, 1),
    num_heads=8,
    transformer_depth=1,
    context_dim=768,
)
# SD 2.x: ldm defaults ATTN_PRECISION to fp32, i.e. attention is upcast.
_SD2 = replace(
    _SD1,
    num_heads=-1,
    num_head_channels=64,
    context_dim=1024,
    use_linear_in_transformer=True,
    upcast_attention=True,
)
_SDXL_BASE = UNetConfig(
    model_channels=320,
    channel_mult=(1, 2, 4),
    num_res_blocks=2,
    attention_resolutions=(4, 2),
    num_head_channels=64,
    transformer_depth=(0, 2, 10),
    context_dim=2048,
    use_linear_in_transformer=True,
    num_classes="sequential",
    adm_in_channels=2816,
)
_SDXL_REFINER = UNetConfig(
    model_channels=384,
    channel_mult=(1, 2, 4, 4),
    num_res_blocks=2,
    attention_resolutions=(4, 2),
    num_head_channels=64,
    transformer_depth=4,
    context_dim=1280,
    use_linear_in_transformer=True,
    num_classes="sequential",
    adm_in_channels=2560,
)
# Tiny: for unit tests (a forward at 16x16 takes milliseconds).
_TINY = UNetConfig(
    model_channels=32,
    channel_mult=(1, 2),
    num_res_blocks=1,
    attention_resolutions=(2,),
    num_head_channels=16,
    context_dim=32,
    use_linear_in_transformer=True,
)
# Small: unconditional pixel-space model for 32x32 demos (replace in/out_channels=4 for latents).
_SMALL = UNetConfig(
    in_channels=3,
    out_channels=3,
    model_channels=64,
    channel_mult=(1, 2, 2),
    num_res_blocks=2,
    attention_resolutions=(2,),
    num_head_channels=32,
    use_scale_shift_norm=True,
    dropout=0.1,
)

UNET_PRESETS: dict[str, UNetConfig] = {
    "sd1": _SD1,
    "sd1-inpainting": replace(_SD1, in_channels=9),
    "sd2": _SD2,  # 512-base, eps prediction
    "sd2-v": replace(_SD2, prediction_type="v"),  # 768-v
    "sd2-inpainting": replace(_SD2, in_channels=9),
    "sdxl-base": _SDXL_BASE,
    "sdxl-refiner": _SDXL_REFINER,
    "tiny": _TINY,
    "small": _SMALL,
    "small-class": replace(_SMALL, num_classes=10),  # class-conditional (e.g. CIFAR-10)
}


def get_unet_config(name: str) -> UNetConfig:
    """Return the preset called ``name`` (see ``UNET_PRESETS``)."""
    if name not in UNET_PRESETS:
        raise ValueError(f"unknown UNet preset {name!r}; valid names: {sorted(UNET_PRESETS)}")
    return UNET_PRESETS[name]
