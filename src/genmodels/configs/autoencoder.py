"""Autoencoder configs and presets (ldm ``ddconfig`` + ``embed_dim`` + latent scaling)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any


@dataclass(frozen=True)
class AutoencoderConfig:
    """Settings of the KL autoencoder; names follow ldm's ``ddconfig``.

    ``scale_factor`` / ``shift_factor`` map posterior latents to the diffusion model's latents:
    z_diffusion = scale_factor * (z - shift_factor) (ldm uses shift 0; sgm/flux-style VAEs don't).
    ``force_upcast`` runs encode/decode in fp32 when the weights are fp16 (the SD-XL VAE overflows
    fp16, as diffusers' ``force_upcast``).
    """

    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = ()
    dropout: float = 0.0
    in_channels: int = 3
    out_ch: int = 3
    resolution: int = 256
    z_channels: int = 4
    double_z: bool = True
    embed_dim: int = 4
    attn_type: str = "vanilla"
    num_groups: int = 32
    give_pre_end: bool = False
    tanh_out: bool = False
    scale_factor: float = 0.18215
    shift_factor: float = 0.0
    force_upcast: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "ch_mult", tuple(self.ch_mult))
        object.__setattr__(self, "attn_resolutions", tuple(self.attn_resolutions))
        if not self.double_z:
            raise ValueError("AutoencoderKL needs double_z=True (mean and logvar)")
        for name in ("ch", "in_channels", "out_ch", "z_channels", "embed_dim", "num_groups"):
            if getattr(self, name) <= 0:
                raise ValueError(f"expected {name} > 0, got {getattr(self, name)}")
        if self.scale_factor <= 0:
            raise ValueError(f"expected scale_factor > 0, got {self.scale_factor}")
        widths = {self.ch * m for m in self.ch_mult}
        if any(w % self.num_groups for w in widths):
            raise ValueError(
                f"channel widths {sorted(widths)} must be divisible by num_groups={self.num_groups}"
            )

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    def _common(self) -> dict[str, Any]:
        keys = ("ch", "ch_mult", "num_res_blocks", "attn_resolutions", "dropout", "resolution")
        return {k: getattr(self, k) for k in keys} | {
            "z_channels": self.z_channels,
            "attn_type": self.attn_type,
            "num_groups": self.num_groups,
        }

    def encoder_kwargs(self) -> dict[str, Any]:
        return self._common() | {"in_channels": self.in_channels, "double_z": self.double_z}

    def decoder_kwargs(self) -> dict[str, Any]:
        return self._common() | {
            "out_ch": self.out_ch,
            "give_pre_end": self.give_pre_end,
            "tanh_out": self.tanh_out,
        }

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# SD 1.x / 2.x f8 KL VAE (ldm ``first_stage_config``): 83.7M parameters.
SD = AutoencoderConfig()
# SD-XL: same network, retrained; latents scaled by 0.13025; overflows in fp16.
SDXL = replace(SD, scale_factor=0.13025, force_upcast=True)
# Test / demo sizes (scale 1.0: random weights have no calibrated latent scale).
TINY = AutoencoderConfig(
    ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, resolution=32, scale_factor=1.0
)  # f4, 32-64 channels
SMALL = AutoencoderConfig(
    ch=32, ch_mult=(1, 2, 2, 2), num_res_blocks=1, resolution=64, scale_factor=1.0
)  # f8, 32-64 channels

# The built-in digits (benchmarks/ldm_digits.py, ``genmodels train --preset autoencoder-digits``):
# f2, 8x8x1 -> 4x4x4 latents; scale 1.0 until training sets 1 / std (ldm ``scale_by_std``).
DIGITS = AutoencoderConfig(
    ch=32, ch_mult=(1, 2), num_res_blocks=1, in_channels=1, out_ch=1, resolution=8,
    z_channels=4, embed_dim=4, scale_factor=1.0,
)  # fmt: skip

PRESETS: dict[str, AutoencoderConfig] = {
    "sd": SD, "sdxl": SDXL, "tiny": TINY, "small": SMALL, "digits": DIGITS,
}  # fmt: skip


def get_autoencoder_config(name: str, **overrides: Any) -> AutoencoderConfig:
    """Return preset ``name`` (a key of ``PRESETS``), optionally with fields replaced."""
    if name not in PRESETS:
        raise ValueError(f"unknown autoencoder preset {name!r}; valid: {sorted(PRESETS)}")
    return replace(PRESETS[name], **overrides) if overrides else PRESETS[name]
