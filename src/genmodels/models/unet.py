"""The Stable Diffusion UNet (ldm/sgm ``openaimodel.UNetModel``) with checkpoint-identical names.

Layout (Ho et al. 2020; Dhariwal & Nichol 2021; Rombach et al. 2022): ``input_blocks`` (conv_in,
then per level ``num_res_blocks`` x [ResBlock, SpatialTransformer?] and a Downsample),
``middle_block`` (ResBlock, SpatialTransformer, ResBlock), ``output_blocks`` (per level
``num_res_blocks + 1`` x [ResBlock on the concatenated skip, SpatialTransformer?] and an Upsample)
and ``out`` (GroupNorm, SiLU, conv). An SD 1.x/2.x/XL ``model.diffusion_model.*`` state dict loads
with ``strict=True`` once the prefix is stripped.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from genmodels.configs.unet import UNetConfig
from genmodels.models.feature_cache import DeepCache
from genmodels.nn.embeddings import timestep_embedding
from genmodels.nn.normalization import normalization
from genmodels.nn.resnet import ResBlock, zero_module
from genmodels.nn.transformer import SpatialTransformer
from genmodels.nn.updown import Downsample, Upsample


class EmbedSequential(nn.Sequential):
    """ldm ``TimestepEmbedSequential``: ``emb`` goes to ResBlocks, ``context`` to transformers."""

    def forward(
        self,
        x: Tensor,
        emb: Tensor,
        context: Tensor | None = None,
        output_size: tuple[int, int] | None = None,
    ) -> Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            elif isinstance(layer, Upsample):
                x = layer(x, output_size)
            else:
                x = layer(x)
        return x


def res_block(c: UNetConfig, ch_in: int, ch_out: int, up: bool = False,
              down: bool = False) -> ResBlock:  # fmt: skip
    """A ResBlock of the UNet described by ``c``."""
    return ResBlock(
        ch_in, 4 * c.model_channels, c.dropout, ch_out, use_conv=False,
        use_scale_shift_norm=c.use_scale_shift_norm, up=up, down=down,
        use_checkpoint=c.use_checkpoint,
    )  # fmt: skip


def attention_block(
    c: UNetConfig, ch: int, depth: int, disable_self_attn: bool
) -> SpatialTransformer:
    """A SpatialTransformer of the UNet described by ``c``."""
    n_heads, d_head = c.heads(ch)
    return SpatialTransformer(
        ch, n_heads, d_head, depth, c.dropout, c.context_dim, disable_self_attn,
        c.use_linear_in_transformer, c.upcast_attention, c.use_checkpoint,
    )  # fmt: skip


def time_embedding(c: UNetConfig) -> nn.Sequential:
    """``time_embed``: MLP on the sinusoidal timestep embedding."""
    mc, emb_dim = c.model_channels, 4 * c.model_channels
    return nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))


def label_embedding(c: UNetConfig) -> nn.Module | None:
    """``label_emb``: SDXL's MLP on the vector y, a class embedding, or None."""
    emb_dim = 4 * c.model_channels
    if c.num_classes == "sequential":  # SDXL: MLP on the vector y (pooled text + sizes)
        return nn.Sequential(
            nn.Sequential(
                nn.Linear(c.adm_in_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
            )
        )
    if isinstance(c.num_classes, int):
        return nn.Embedding(c.num_classes, emb_dim)
    return None


def encoder_blocks(c: UNetConfig) -> tuple[nn.ModuleList, EmbedSequential, list[int]]:
    """The encoder half: (``input_blocks``, ``middle_block``, channels of each input block's
    output). The UNet and a ControlNet (a copy of this half) both build it here."""
    mc = c.model_channels
    input_blocks = nn.ModuleList([EmbedSequential(nn.Conv2d(c.in_channels, mc, 3, padding=1))])
    skip_chans, ch = [mc], mc  # channels of each input block's output, consumed by the decoder
    for level, mult in enumerate(c.channel_mult):
        for _ in range(c.res_blocks(level)):
            layers: list[nn.Module] = [res_block(c, ch, mult * mc)]
            ch = mult * mc
            if c.has_attention(level):
                layers.append(attention_block(c, ch, c.depth(level), c.self_attn_disabled(level)))
            input_blocks.append(EmbedSequential(*layers))
            skip_chans.append(ch)
        if level != c.levels - 1:
            if c.resblock_updown:
                input_blocks.append(EmbedSequential(res_block(c, ch, ch, down=True)))
            else:
                input_blocks.append(EmbedSequential(Downsample(ch, c.conv_resample)))
            skip_chans.append(ch)
    middle_block = EmbedSequential(
        res_block(c, ch, ch),
        attention_block(c, ch, c.middle_depth, c.disable_middle_self_attn),
        res_block(c, ch, ch),
    )
    return input_blocks, middle_block, skip_chans


def embed(
    c: UNetConfig, time_embed: nn.Module, label_emb: nn.Module | None, timesteps: Tensor,
    y: Tensor | None,
) -> Tensor:  # fmt: skip
    """The embedding ``emb`` (B, 4 * model_channels) the ResBlocks get: time (+ label / y)."""
    dtype = time_embed[0].weight.dtype
    emb = time_embed(timestep_embedding(timesteps, c.model_channels).to(dtype))
    if label_emb is not None:
        emb = emb + label_emb(y.to(dtype) if y.is_floating_point() else y)
    return emb


class UNetModel(nn.Module):
    """Denoising UNet: ``forward(x, timesteps, context=None, y=None) -> Tensor`` of x's shape."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = c = config
        mc = c.model_channels
        self.time_embed = time_embedding(c)
        self.label_emb: nn.Module | None = label_embedding(c)
        self.input_blocks, self.middle_block, skip_chans = encoder_blocks(c)
        ch = skip_chans[-1]

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(c.channel_mult))):
            for i in range(c.res_blocks(level) + 1):
                layers = [res_block(c, ch + skip_chans.pop(), mult * mc)]
                ch = mult * mc
                if c.has_attention(level):
                    layers.append(
                        attention_block(c, ch, c.depth(level), c.self_attn_disabled(level))
                    )
                if level and i == c.res_blocks(level):
                    if c.resblock_updown:
                        layers.append(res_block(c, ch, ch, up=True))
                    else:
                        layers.append(Upsample(ch, c.conv_resample))
                self.output_blocks.append(EmbedSequential(*layers))

        self.out = nn.Sequential(
            normalization(ch), nn.SiLU(), zero_module(nn.Conv2d(mc, c.out_channels, 3, padding=1))
        )

    def forward(
        self,
        x: Tensor,
        timesteps: Tensor | float,
        context: Tensor | None = None,
        y: Tensor | None = None,
        down_residuals: Sequence[Tensor] | None = None,
        mid_residual: Tensor | None = None,
        cache: DeepCache | None = None,
    ) -> Tensor:
        """x: (B, in_channels, H, W); timesteps: (B,) or scalar; context: (B, S, context_dim);
        y: (B, adm_in_channels) for SDXL or (B,) class labels. Returns (B, out_channels, H, W)
        in x's dtype; the network computes in its parameters' dtype.

        SDXL's ``y`` (sgm's vector conditioning; diffusers' ``text_embeds`` + ``time_ids``) is
        ``cat([pooled_text (B, 1280), timestep_embedding(time_ids.flatten(), 256).reshape(B, -1)])``
        with ``time_ids = (orig_h, orig_w, crop_top, crop_left, target_h, target_w)`` (base) or
        ``(orig_h, orig_w, crop_top, crop_left, aesthetic_score)`` (refiner).

        ``down_residuals`` (one per input block) and ``mid_residual`` are added to the skip
        connections and to the middle block's output: a ControlNet's control (ldm
        ``ControlledUnetModel``; diffusers' ``down_block_additional_residuals`` /
        ``mid_block_additional_residual``).

        ``cache``: a ``DeepCache`` of this sampling run; its partial evaluations run only the
        shallow skip branch of ``cache.depth`` blocks on the cached deep feature (and take only
        the residuals of those skips).
        """
        timesteps = self._check_inputs(x, timesteps, context, y)
        dtype = self.time_embed[0].weight.dtype
        emb = embed(self.config, self.time_embed, self.label_emb, timesteps, y)
        if context is not None:
            context = context.to(dtype)

        n = len(self.input_blocks)
        k = n if cache is None else cache.depth  # input blocks (and skips) computed
        feature = None
        if cache is not None:
            cache.check_depth(n)
            key = (tuple(x.shape), dtype)
            feature = cache.cached(key, float(timesteps.max()))
        h, hs = x.to(dtype), []
        for block in self.input_blocks[: k if feature is not None else n]:
            h = block(h, emb, context)
            hs.append(h)
        if down_residuals is not None:
            if len(down_residuals) != n:
                raise ValueError(f"UNetModel: expected {n} residuals, got {len(down_residuals)}")
            hs = add_residuals(hs, down_residuals[: len(hs)])  # a cached step: its skips only
        if feature is None:
            h = self.middle_block(h, emb, context)
            if mid_residual is not None:
                h = add_residuals([h], [mid_residual])[0]
            h = self._decode(self.output_blocks[: n - k], h, hs, emb, context)
            if cache is not None:
                cache.store(key, h)
        else:
            h = feature
        h = self._decode(self.output_blocks[n - k :], h, hs, emb, context)
        return self.out(h).to(x.dtype)

    @staticmethod
    def _decode(
        blocks: Sequence[nn.Module], h: Tensor, hs: list[Tensor], emb: Tensor,
        context: Tensor | None,
    ) -> Tensor:  # fmt: skip
        """Run decoder ``blocks``, each on ``h`` joined with the last skip of ``hs`` (popped)."""
        for block in blocks:
            h = torch.cat([h, hs.pop()], dim=1)
            # an Upsample meets the next skip: its size (odd latent sides, diffusers' upsample_size)
            h = block(h, emb, context, tuple(hs[-1].shape[2:]) if hs else None)
        return h

    def _check_inputs(
        self, x: Tensor, timesteps: Tensor | float, context: Tensor | None, y: Tensor | None
    ) -> Tensor:
        c = self.config
        if x.ndim != 4 or x.shape[1] != c.in_channels:
            raise ValueError(
                f"UNetModel: expected x of shape (B, {c.in_channels}, H, W), got {tuple(x.shape)}"
            )
        factor = 2 ** (c.levels - 1)
        if c.resblock_updown and (x.shape[2] % factor or x.shape[3] % factor):
            # ResBlock up/down sampling has no output size to meet an odd skip (no reference
            # does); conv/pool resampling takes any size, as diffusers and ComfyUI
            raise ValueError(
                f"UNetModel: spatial size {tuple(x.shape[2:])} must be divisible by {factor} "
                f"with resblock_updown (2^(levels-1) for {c.levels} levels)"
            )
        b = x.shape[0]
        timesteps = torch.as_tensor(timesteps, device=x.device)
        if timesteps.numel() == 1:
            timesteps = timesteps.reshape(1).expand(b)
        if timesteps.shape != (b,):
            raise ValueError(
                f"UNetModel: expected timesteps of shape ({b},) or a scalar, "
                f"got {tuple(timesteps.shape)}"
            )
        if c.context_dim is not None:
            if context is None or context.ndim != 3 or context.shape[0] != b:
                got = None if context is None else tuple(context.shape)
                raise ValueError(
                    f"UNetModel: expected context of shape ({b}, S, {c.context_dim}), got {got}"
                )
            if context.shape[2] != c.context_dim:
                raise ValueError(
                    f"UNetModel: expected context of shape ({b}, S, {c.context_dim}), "
                    f"got {tuple(context.shape)}"
                )
        elif context is not None:
            raise ValueError("UNetModel: got a context, but context_dim=None (no cross-attention)")
        if c.num_classes is None and y is not None:
            raise ValueError(
                "UNetModel: got y, but num_classes=None (no class/vector conditioning)"
            )
        if c.num_classes == "sequential":
            if y is None or tuple(y.shape) != (b, c.adm_in_channels):
                got = None if y is None else tuple(y.shape)
                raise ValueError(
                    f"UNetModel: expected y of shape ({b}, {c.adm_in_channels}), got {got}"
                )
        elif c.num_classes is not None:
            if y is None or tuple(y.shape) != (b,) or y.is_floating_point():
                got = None if y is None else (tuple(y.shape), y.dtype)
                raise ValueError(
                    f"UNetModel: expected integer class labels y of shape ({b},), got {got}"
                )
        return timesteps


def add_residuals(hs: list[Tensor], residuals: Sequence[Tensor]) -> list[Tensor]:
    """``h + r`` for each pair (a ControlNet's control), counts and shapes checked."""
    if len(residuals) != len(hs):
        raise ValueError(f"UNetModel: expected {len(hs)} residuals, got {len(residuals)}")
    for h, r in zip(hs, residuals):
        if r.shape != h.shape:
            raise ValueError(
                f"UNetModel: a residual of shape {tuple(r.shape)} does not fit the UNet feature "
                f"of shape {tuple(h.shape)}"
            )
    return [h + r.to(h.dtype) for h, r in zip(hs, residuals)]
