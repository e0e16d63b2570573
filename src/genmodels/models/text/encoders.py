"""SD1 / SD2 / SDXL text conditioners: prompts -> (context, pooled).

Each embedder tokenizes with its own padding token, runs its CLIP text transformer and returns the
hidden state its model was trained with (see ``genmodels.configs.text`` for the per-model rules):

* SD 1.x (ldm ``FrozenCLIPEmbedder``): CLIP-L last layer after final_layer_norm, pad with EOS.
* SD 2.x (ldm ``FrozenOpenCLIPEmbedder``, layer="penultimate"): OpenCLIP-H penultimate layer,
  then ln_final, pad with 0.
* SDXL (sgm ``GeneralConditioner``): CLIP-L hidden_states[-2] without final norm (pad EOS) and
  OpenCLIP-bigG penultimate without final norm (pad 0), concatenated on channels (768 + 1280);
  pooled = ln_final(last layer of bigG) at the EOS position @ text_projection.

Prompts longer than 75 tokens are split into chunks (A1111/ComfyUI), each encoded as its own
77-token sequence; the chunk encodings are concatenated along the sequence axis. Prompts of one
batch are padded to the same number of chunks with empty chunks (BOS, EOS, padding), as A1111
pads conditionings of different lengths. The pooled output comes from the first chunk.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from genmodels.configs.text import EmbedderConfig, TextEncoderConfig, encoder_preset
from genmodels.models.text.clip import CLIPTextModel, load_text_state_dict
from genmodels.models.text.tokenizer import CLIPTokenizer, split_chunks


@dataclass
class TextConditioning:
    context: Tensor  # (B, 77 * n_chunks, sum of embedder widths): cross-attention context
    pooled: Tensor | None  # (B, projection_dim) from the embedder with with_pooled, else None


class CLIPEmbedder(nn.Module):
    """One tokenizer + CLIP text model + the layer/norm/padding rule of one diffusion model."""

    def __init__(self, config: EmbedderConfig) -> None:
        super().__init__()
        self.config = config
        self.tokenizer = CLIPTokenizer(
            pad_token_id=config.pad_token_id,
            html_unescape=config.html_unescape,
            context_length=config.text.max_position_embeddings,
        )
        self.model = CLIPTextModel(config.text)

    def token_chunks(self, prompt: str, comma_backtrack: int) -> list[list[int]]:
        """Unwrapped token chunks of one prompt (each at most context_length - 2 ids)."""
        tok = self.tokenizer
        return split_chunks(
            tok.encode(prompt), tok.context_length - 2, tok.comma_token_id, comma_backtrack
        )

    def encode_tokens(self, tokens: Tensor) -> tuple[Tensor, Tensor | None]:
        """tokens (N, T) -> hidden state (N, T, D) and pooled projection (N, P) or None."""
        cfg = self.config
        if not cfg.with_pooled:
            return self.model.hidden_state(tokens, cfg.layer, cfg.final_norm), None
        out = self.model(tokens, output_hidden_states=True)
        hidden = out.hidden_states[cfg.layer]
        if cfg.final_norm:
            hidden = self.model.text_model.final_layer_norm(hidden)
        return hidden, out.text_embeds


class TextEncoder(nn.Module):
    """Prompts -> ``TextConditioning`` for one diffusion model (one or two CLIP embedders)."""

    def __init__(self, config: TextEncoderConfig | str, clip_skip: int | None = None) -> None:
        super().__init__()
        if isinstance(config, str):
            config = encoder_preset(config, clip_skip)
        elif clip_skip is not None:
            raise ValueError(
                "clip_skip is only accepted with a preset name; set EmbedderConfig.layer"
            )
        self.config = config
        self.embedders = nn.ModuleList(CLIPEmbedder(e) for e in config.embedders)

    def tokenize(self, prompts: str | Sequence[str]) -> list[Tensor]:
        """Per embedder, (B, n_chunks, 77) token ids; n_chunks is shared by all prompts and all
        embedders (shorter ones are padded with empty chunks)."""
        prompts = _as_prompt_list(prompts)
        per_embedder = [
            [e.token_chunks(p, self.config.comma_backtrack) for p in prompts]
            for e in self.embedders
        ]
        n = max(len(chunks) for batch in per_embedder for chunks in batch)
        out = []
        for emb, batch in zip(self.embedders, per_embedder):
            rows = [
                [emb.tokenizer.wrap(c) for c in chunks + [[]] * (n - len(chunks))]
                for chunks in batch
            ]
            out.append(torch.tensor(rows, dtype=torch.long))
        return out

    def encode_tokens(self, tokens: Sequence[Tensor]) -> TextConditioning:
        """Per-embedder (B, n_chunks, T) ids (from ``tokenize``) -> conditioning."""
        if len(tokens) != len(self.embedders):
            raise ValueError(f"expected {len(self.embedders)} token tensors, got {len(tokens)}")
        device = next(self.parameters()).device
        contexts, pooled = [], None
        for emb, ids in zip(self.embedders, tokens):
            if ids.ndim != 3:
                raise ValueError(f"token ids must be (B, n_chunks, T), got {tuple(ids.shape)}")
            b, n, t = ids.shape
            hidden, proj = emb.encode_tokens(ids.reshape(b * n, t).to(device))  # (B*n, T, D)
            contexts.append(hidden.reshape(b, n * t, hidden.shape[-1]))
            if proj is not None:
                pooled = proj.reshape(b, n, -1)[:, 0]  # first chunk, as A1111/ComfyUI
        return TextConditioning(torch.cat(contexts, dim=-1), pooled)

    def forward(self, prompts: str | Sequence[str]) -> TextConditioning:
        return self.encode_tokens(self.tokenize(prompts))

    def load_text_state_dicts(self, state_dicts: Sequence[dict[str, Tensor]]) -> None:
        """Load one HF-layout state dict per embedder (see ``checkpoints.openclip_keys``)."""
        if len(state_dicts) != len(self.embedders):
            raise ValueError(f"expected {len(self.embedders)} state dicts, got {len(state_dicts)}")
        for emb, sd in zip(self.embedders, state_dicts):
            load_text_state_dict(emb.model, sd)


def _as_prompt_list(prompts: str | Sequence[str]) -> list[str]:
    if isinstance(prompts, str):
        return [prompts]
    if (
        not isinstance(prompts, Sequence)
        or not prompts
        or not all(isinstance(p, str) for p in prompts)
    ):
        raise ValueError(
            f"prompts must be a str or a non-empty sequence of str, got {prompts!r:.80}"
        )
    return list(prompts)
