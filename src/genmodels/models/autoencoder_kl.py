"""KL-regularised autoencoder of latent diffusion (Rombach et al., 2022; ldm ``AutoencoderKL``).

Parameter names equal the ``first_stage_model.*`` keys of the original SD / SD-XL checkpoints
after stripping that prefix: ``encoder.*``, ``decoder.*``, ``quant_conv.*``,
``post_quant_conv.*``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from genmodels.configs.autoencoder import AutoencoderConfig
from genmodels.models.autoencoder import Decoder, Encoder
from genmodels.models.distributions import DiagonalGaussianDistribution
from genmodels.models.tiling import TilingConfig, tiled_forward


class AutoencoderKL(nn.Module):
    """x (B, 3, H, W) in [-1, 1] <-> posterior over z (B, embed_dim, H/f, W/f)."""

    def __init__(self, config: AutoencoderConfig, tiling: TilingConfig | None = None) -> None:
        super().__init__()
        self.config = config
        self.tiling = tiling
        self.encoder = Encoder(**config.encoder_kwargs())
        self.decoder = Decoder(**config.decoder_kwargs())
        self.quant_conv = nn.Conv2d(2 * config.z_channels, 2 * config.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(config.embed_dim, config.z_channels, 1)

    @property
    def downsample_factor(self) -> int:
        return self.config.downsample_factor

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        self.encoder.gradient_checkpointing = enabled
        self.decoder.gradient_checkpointing = enabled

    # -- raw maps -------------------------------------------------------------------------------

    def _moments(self, x: Tensor) -> Tensor:
        return self.quant_conv(self.encoder(x))  # (B, 2*embed_dim, H/f, W/f)

    def _decode(self, z: Tensor) -> Tensor:
        return self.decoder(self.post_quant_conv(z))  # (B, out_ch, h*f, w*f)

    def _use_tiling(self, tiled: bool | None, h: int, w: int) -> TilingConfig | None:
        if tiled is False:
            return None
        if tiled is None:
            auto = self.tiling is not None and self.tiling.wants_tiling(h, w)
            return self.tiling if auto else None
        return self.tiling or TilingConfig()

    @contextmanager
    def _upcast(self, x: Tensor) -> Iterator[Tensor]:
        """fp32 compute for fp16 weights when ``config.force_upcast`` (restored exactly after).

        Inference only: under autograd the weights are left alone (train with fp32 weights and
        autocast instead).
        """
        dtype = self.quant_conv.weight.dtype
        upcast = self.config.force_upcast and dtype == torch.float16
        if not upcast or torch.is_grad_enabled():
            yield x.to(dtype)
            return
        self.float()
        try:
            yield x.float()
        finally:
            self.to(dtype)

    # -- public API ------------------------------------------------------------------------------

    def encode(self, x: Tensor, tiled: bool | None = None) -> DiagonalGaussianDistribution:
        """Image (B, in_channels, H, W) -> posterior q(z | x); ``tiled=None`` follows ``tiling``."""
        self.encoder.check_input(x)
        tiling = self._use_tiling(tiled, x.shape[-2], x.shape[-1])
        with self._upcast(x) as xc:
            if tiling is None:
                moments = self._moments(xc)
            else:
                f = self.downsample_factor
                tile = max(f, tiling.tile_size // f * f)
                moments = tiled_forward(
                    self._moments,
                    xc,
                    tile=tile,
                    overlap=min(tiling.overlap // f * f, tile - f),
                    context=tiling.context // f * f,
                    align=f,
                    norm_module=self if tiling.norm_stats == "global" else None,
                    stats_size=max(f, tiling.stats_size // f * f),
                )
        return DiagonalGaussianDistribution(moments.to(x.dtype))

    def decode(self, z: Tensor, tiled: bool | None = None) -> Tensor:
        """Latent (B, embed_dim, h, w) -> image (B, out_ch, h*f, w*f)."""
        if z.ndim != 4 or z.shape[1] != self.config.embed_dim:
            raise ValueError(
                f"expected latent of shape (B, {self.config.embed_dim}, h, w), got {tuple(z.shape)}"
            )
        f = self.downsample_factor
        tiling = self._use_tiling(tiled, z.shape[-2] * f, z.shape[-1] * f)
        with self._upcast(z) as zc:
            if tiling is None:
                return self._decode(zc).to(z.dtype)
            tile = max(1, tiling.tile_size // f)
            return tiled_forward(
                self._decode,
                zc,
                tile=tile,
                overlap=min(tiling.overlap // f, tile - 1),
                context=tiling.context // f,
                norm_module=self if tiling.norm_stats == "global" else None,
                stats_size=max(1, tiling.stats_size // f),
            ).to(z.dtype)

    def forward(
        self, x: Tensor, sample_posterior: bool = True, generator: torch.Generator | None = None
    ) -> tuple[Tensor, DiagonalGaussianDistribution]:
        """Reconstruction and posterior (training path; never tiled)."""
        posterior = self.encode(x, tiled=False)
        z = posterior.sample(generator) if sample_posterior else posterior.mode()
        return self.decode(z, tiled=False), posterior

    def encode_latents(
        self, x: Tensor, generator: torch.Generator | None = None, sample: bool = True
    ) -> Tensor:
        """Image -> diffusion latents scale_factor * (z - shift_factor); z sampled or the mode."""
        posterior = self.encode(x)
        z = posterior.sample(generator) if sample else posterior.mode()
        return self.config.scale_factor * (z - self.config.shift_factor)

    def decode_latents(self, z: Tensor) -> Tensor:
        """Diffusion latents -> image, undoing ``encode_latents``' scale and shift."""
        return self.decode(z / self.config.scale_factor + self.config.shift_factor)
