"""ControlNet configuration (Zhang et al. 2023, "Adding Conditional Control to Text-to-Image
Diffusion Models"; ldm ``cldm.ControlNet`` / diffusers ``ControlNetModel``).

A ControlNet is a trainable copy of the encoder half of the UNet it controls (``input_blocks``
and ``middle_block`` with their time / label embeddings), plus the hint encoder
(``input_hint_block``) that brings the control image down to latent resolution, and zero-
initialised 1x1 convolutions (``zero_convs``, ``middle_block_out``) that produce the residuals
added to the UNet's skip connections and middle block.
"""

from __future__ import annotations

from dataclasses import dataclass

from genmodels.configs.unet import UNetConfig


@dataclass(frozen=True)
class ControlNetConfig:
    """Architecture of :class:`genmodels.models.controlnet.ControlNetModel`.

    ``unet``: the encoder half's architecture (its ``out_channels`` and the decoder are unused).
    ``hint_channels``: channels of the control image (3: RGB). ``hint_block_channels``: widths
    of the hint encoder's stages (ldm: 16, 32, 96, 256; diffusers'
    ``conditioning_embedding_out_channels``); each stage after the first halves the size, so the
    control image is ``2 ** (len(hint_block_channels) - 1)`` times the latent size (8 for SD).
    """

    unet: UNetConfig
    hint_channels: int = 3
    hint_block_channels: tuple[int, ...] = (16, 32, 96, 256)

    def __post_init__(self) -> None:
        if self.hint_channels < 1:
            raise ValueError(
                f"ControlNetConfig: hint_channels must be >= 1, got {self.hint_channels}"
            )
        if not self.hint_block_channels or any(c < 1 for c in self.hint_block_channels):
            raise ValueError(
                "ControlNetConfig: hint_block_channels must be a non-empty tuple of positive "
                f"widths, got {self.hint_block_channels}"
            )
        if self.unet.resblock_updown:
            raise ValueError("ControlNetConfig: resblock_updown UNets are not supported")

    @property
    def hint_factor(self) -> int:
        """How many times larger than the latent the control image is."""
        return 2 ** (len(self.hint_block_channels) - 1)
