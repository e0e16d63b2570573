"""Configs and presets for the CLIP text transformer and the SD1/SD2/SDXL text-encoder front-ends.

Sizes follow the released models: OpenAI CLIP ViT-L/14 (Radford et al. 2021, as used by SD 1.x),
OpenCLIP ViT-H/14 (SD 2.x) and OpenCLIP ViT-bigG/14 (SDXL's second embedder).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

BOS_TOKEN_ID = 49406  # <|startoftext|>
EOS_TOKEN_ID = 49407  # <|endoftext|>
CONTEXT_LENGTH = 77

Activation = Literal["quick_gelu", "gelu"]


@dataclass(frozen=True)
class CLIPTextConfig:
    """Hyper-parameters of the CLIP text transformer (names as in HF ``CLIPTextConfig``)."""

    vocab_size: int = 49408
    max_position_embeddings: int = CONTEXT_LENGTH
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    hidden_act: Activation = "quick_gelu"
    layer_norm_eps: float = 1e-5
    # Output width of ``text_projection`` (no bias); None for a model without a projection.
    projection_dim: int | None = None

    def __post_init__(self) -> None:
        if self.hidden_act not in ("quick_gelu", "gelu"):
            raise ValueError(f"hidden_act must be 'quick_gelu' or 'gelu', got {self.hidden_act!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by "
                f"num_attention_heads={self.num_attention_heads}"
            )
        for name in ("vocab_size", "max_position_embeddings", "intermediate_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_hidden_layers < 1:
            raise ValueError(f"num_hidden_layers must be >= 1, got {self.num_hidden_layers}")


TEXT_PRESETS: dict[str, CLIPTextConfig] = {
    # OpenAI CLIP ViT-L/14 text tower (openai/clip-vit-large-patch14).
    "clip-l": CLIPTextConfig(projection_dim=768),
    # OpenCLIP ViT-H/14 (laion2b_s32b_b79k), SD 2.x.
    "openclip-h": CLIPTextConfig(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        hidden_act="gelu",
        projection_dim=1024,
    ),
    # OpenCLIP ViT-bigG/14 (laion2b_s39b_b160k), SDXL embedders.1.
    "openclip-bigg": CLIPTextConfig(
        hidden_size=1280,
        intermediate_size=5120,
        num_hidden_layers=32,
        num_attention_heads=20,
        hidden_act="gelu",
        projection_dim=1280,
    ),
    # Tiny models for tests and demos (full vocabulary so the real tokenizer can drive them).
    "tiny-clip": CLIPTextConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        projection_dim=16,
    ),
    "tiny-openclip": CLIPTextConfig(
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=3,
        num_attention_heads=4,
        hidden_act="gelu",
        projection_dim=24,
    ),
}


def text_preset(name: str, **overrides: object) -> CLIPTextConfig:
    """Return the named preset, optionally with some fields replaced."""
    if name not in TEXT_PRESETS:
        raise ValueError(f"unknown text preset {name!r}; valid names: {sorted(TEXT_PRESETS)}")
    return replace(TEXT_PRESETS[name], **overrides)


@dataclass(frozen=True)
class EmbedderConfig:
    """One CLIP text embedder of a diffusion model: which hidden state it returns and how it pads.

    ``layer`` indexes the HF-style ``hidden_states`` tuple (embeddings first, then one entry per
    layer): -1 is the last layer, -2 the penultimate. A1111's clip_skip=n is ``layer=-n``.
    """

    text: CLIPTextConfig
    layer: int = -1
    final_norm: bool = True  # apply final_layer_norm to the selected hidden state
    pad_token_id: int = EOS_TOKEN_ID
    html_unescape: bool = (
        False  # OpenAI/OpenCLIP SimpleTokenizer unescapes; HF CLIPTokenizer does not
    )
    with_pooled: bool = False  # also return ln_final(last)[EOS] @ text_projection

    def __post_init__(self) -> None:
        n = self.text.num_hidden_layers
        if not -n <= self.layer <= -1:
            raise ValueError(f"layer must be in [-{n}, -1] for a {n}-layer model, got {self.layer}")
        if self.with_pooled and self.text.projection_dim is None:
            raise ValueError("with_pooled=True needs a text config with projection_dim")


@dataclass(frozen=True)
class TextEncoderConfig:
    """A diffusion model's text conditioner: embedders whose contexts are concatenated on
    channels."""

    embedders: tuple[EmbedderConfig, ...] = field(default_factory=tuple)
    chunk_length: int = 75  # tokens per chunk between BOS and EOS (long prompts are chunked)
    comma_backtrack: int = 20  # A1111 comma_padding_backtrack; 0 gives plain 75-token chunks

    def __post_init__(self) -> None:
        if not self.embedders:
            raise ValueError("TextEncoderConfig needs at least one embedder")
        if sum(e.with_pooled for e in self.embedders) > 1:
            raise ValueError("at most one embedder may provide the pooled output")
        if not 0 <= self.comma_backtrack < self.chunk_length:
            raise ValueError(f"comma_backtrack must be in [0, {self.chunk_length})")


def _sd1(text: CLIPTextConfig) -> TextEncoderConfig:
    # ldm FrozenCLIPEmbedder: HF tokenizer (pad = EOS), last_hidden_state (after final norm).
    return TextEncoderConfig((EmbedderConfig(replace(text, projection_dim=None)),))


def _sd2(text: CLIPTextConfig) -> TextEncoderConfig:
    # ldm FrozenOpenCLIPEmbedder(layer="penultimate"): open_clip tokenizer (pad 0), then ln_final.
    emb = EmbedderConfig(text, layer=-2, pad_token_id=0, html_unescape=True)
    return TextEncoderConfig((emb,))


def _sdxl(clip_l: CLIPTextConfig, big_g: CLIPTextConfig) -> TextEncoderConfig:
    # sgm conditioner: embedders.0 FrozenCLIPEmbedder(layer="hidden", layer_idx=-2), no final norm;
    # embedders.1 FrozenOpenCLIPEmbedder2(layer="penultimate", legacy=False), no final norm, pooled.
    e0 = EmbedderConfig(replace(clip_l, projection_dim=None), layer=-2, final_norm=False)
    e1 = EmbedderConfig(
        big_g, layer=-2, final_norm=False, pad_token_id=0, html_unescape=True, with_pooled=True
    )
    return TextEncoderConfig((e0, e1))


ENCODER_PRESETS: dict[str, TextEncoderConfig] = {
    "sd1": _sd1(TEXT_PRESETS["clip-l"]),
    "sd2": _sd2(TEXT_PRESETS["openclip-h"]),
    "sdxl": _sdxl(TEXT_PRESETS["clip-l"], TEXT_PRESETS["openclip-bigg"]),
    "tiny-sd1": _sd1(TEXT_PRESETS["tiny-clip"]),
    "tiny-sd2": _sd2(TEXT_PRESETS["tiny-openclip"]),
    "tiny-sdxl": _sdxl(TEXT_PRESETS["tiny-clip"], TEXT_PRESETS["tiny-openclip"]),
}


def encoder_preset(name: str, clip_skip: int | None = None) -> TextEncoderConfig:
    """Return the named text-encoder preset; ``clip_skip`` (A1111: 1 = last layer, 2 = penultimate)
    overrides the hidden layer of every embedder, keeping each model's final-norm rule."""
    if name not in ENCODER_PRESETS:
        raise ValueError(
            f"unknown text encoder preset {name!r}; valid names: {sorted(ENCODER_PRESETS)}"
        )
    cfg = ENCODER_PRESETS[name]
    if clip_skip is None:
        return cfg
    if clip_skip < 1:
        raise ValueError(f"clip_skip must be >= 1 (1 = last layer), got {clip_skip}")
    return replace(cfg, embedders=tuple(replace(e, layer=-clip_skip) for e in cfg.embedders))
