"""VQGAN autoencoder (Esser et al. 2021, "Taming Transformers for High-Resolution Image Synthesis").

``VQModel`` = the shared :class:`~genmodels.models.autoencoder.Encoder` / ``Decoder`` around a
quantiser, with taming's parameter names: ``encoder.*``, ``decoder.*``, ``quant_conv``,
``post_quant_conv`` and ``quantize.embedding.weight`` (``quantize.embed.weight`` +
``quantize.proj`` for Gumbel). A taming checkpoint's ``state_dict`` loads with
:func:`genmodels.checkpoints.taming.load_taming_vq` (its training-only ``loss.*`` keys are
dropped, every other key must match).

    z_e = quant_conv(encoder(x))                 # (B, embed_dim, H/f, W/f)
    z_q, emb_loss, info = quantize(z_e)
    x_rec = decoder(post_quant_conv(z_q))

Unlike taming's ``decode_code`` (which calls a method its quantiser lacks), ours works:
indices (B, h, w) or (B, h*w) with ``shape=(B, h, w, C)``.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from genmodels.configs.vqgan import VQConfig
from genmodels.models.autoencoder import Decoder, Encoder
from genmodels.models.quantize import QuantizeInfo, VectorQuantizer
from genmodels.models.quantize_fsq import FSQuantizer
from genmodels.models.quantize_gumbel import GumbelQuantize

__all__ = ["VQModel", "build_quantizer"]


def build_quantizer(cfg: VQConfig) -> nn.Module:
    """The quantiser named by ``cfg.quantizer`` (vq / ema / gumbel / fsq)."""
    if cfg.quantizer in ("vq", "ema"):
        return VectorQuantizer(
            cfg.n_embed,
            cfg.embed_dim,
            cfg.beta,
            legacy=cfg.legacy,
            remap=cfg.remap,
            unknown_index=cfg.unknown_index,
            ema_decay=cfg.ema_decay if cfg.quantizer == "ema" else None,
            kmeans_init=cfg.kmeans_init,
            dead_code_steps=cfg.dead_code_steps,
            l2_normalize=cfg.l2_normalize,
        )
    if cfg.quantizer == "gumbel":
        # taming feeds quant_conv's output (embed_dim = z_channels in its configs) to ``proj``
        return GumbelQuantize(
            cfg.embed_dim,
            cfg.embed_dim,
            cfg.n_embed,
            kl_weight=cfg.kl_weight,
            remap=cfg.remap,
            unknown_index=cfg.unknown_index,
        )
    return FSQuantizer(cfg.fsq_levels)


class VQModel(nn.Module):
    """Vector-quantised autoencoder with taming's parameter layout."""

    def __init__(self, cfg: VQConfig) -> None:
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(**cfg.encoder_kwargs())
        self.decoder = Decoder(**cfg.decoder_kwargs())
        self.quantize = build_quantizer(cfg)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.z_channels, 1)

    @property
    def n_codes(self) -> int:
        """Number of distinct code indices (the GPT's image vocabulary; remapped with remap)."""
        return getattr(self.quantize, "re_embed", self.config.n_embed)

    def encode_to_prequant(self, x: Tensor) -> Tensor:
        """x (B, in_channels, H, W) -> z_e (B, embed_dim, H/f, W/f), before quantisation."""
        return self.quant_conv(self.encoder(x))

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor, QuantizeInfo]:
        """x -> (z_q (B, embed_dim, h, w), emb_loss (), info with indices)."""
        return self.quantize(self.encode_to_prequant(x))

    def decode(self, quant: Tensor) -> Tensor:
        """z_q (B, embed_dim, h, w) -> image (B, out_ch, h*f, w*f)."""
        if quant.ndim != 4 or quant.shape[1] != self.config.embed_dim:
            raise ValueError(
                f"expected quantised latent (B, {self.config.embed_dim}, h, w), got "
                f"{tuple(quant.shape)}"
            )
        return self.decoder(self.post_quant_conv(quant))

    def encode_to_indices(self, x: Tensor) -> Tensor:
        """Code indices (B, h, w) of images x."""
        quant, _, info = self.encode(x)
        b, _, h, w = quant.shape
        return info.indices.reshape(b, h, w)

    def decode_code(self, indices: Tensor, shape: Sequence[int] | None = None) -> Tensor:
        """Images from code indices: (B, h, w), or (B, h*w) / (B*h*w,) with shape (B, h, w, C)."""
        if shape is None and indices.ndim != 3:
            raise ValueError(
                f"indices of shape {tuple(indices.shape)} need shape=(B, h, w, "
                f"{self.config.embed_dim}); or pass (B, h, w) indices"
            )
        quant = self.quantize.get_codebook_entry(indices, shape)  # (B, C, h, w)
        return self.decode(quant)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, QuantizeInfo]:
        """x -> (reconstruction, emb_loss, info)."""
        quant, emb_loss, info = self.encode(x)
        return self.decode(quant), emb_loss, info

    def get_last_layer(self) -> Tensor:
        """The decoder's last weight, where the adaptive GAN weight compares gradients."""
        return self.decoder.conv_out.weight
