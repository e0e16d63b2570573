"""CLIP text transformer (Radford et al. 2021, "Learning Transferable Visual Models From Natural
Language Supervision"): token + learned position embeddings, pre-LN causal transformer blocks,
final LayerNorm, pooled output at the EOS position and an optional bias-free text projection.

Parameter names follow HF ``CLIPTextModel`` / ``CLIPTextModelWithProjection``
(``text_model.encoder.layers.N.self_attn.q_proj.weight``, ``text_projection.weight``), so SD 1.x
and SDXL CLIP-L weights load after a prefix strip; OpenCLIP weights are converted by
``genmodels.checkpoints.openclip_keys``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from genmodels.checkpoints.strict import load_strict
from genmodels.configs.text import CLIPTextConfig


def quick_gelu(x: Tensor) -> Tensor:
    """OpenAI CLIP's sigmoid approximation of GELU: x * sigmoid(1.702 x)."""
    return x * torch.sigmoid(1.702 * x)


class CLIPAttention(nn.Module):
    """Causal multi-head self-attention with separate q/k/v projections (torch SDPA)."""

    def __init__(self, config: CLIPTextConfig) -> None:
        super().__init__()
        d = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.q_proj = nn.Linear(d, d)
        self.k_proj = nn.Linear(d, d)
        self.v_proj = nn.Linear(d, d)
        self.out_proj = nn.Linear(d, d)

    def forward(self, x: Tensor) -> Tensor:
        # x: (B, T, D)
        q, k, v = (
            rearrange(proj(x), "b t (h d) -> b h t d", h=self.num_heads)
            for proj in (self.q_proj, self.k_proj, self.v_proj)
        )
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, d)
        return self.out_proj(rearrange(out, "b h t d -> b t (h d)"))


class CLIPMLP(nn.Module):
    def __init__(self, config: CLIPTextConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)
        self.act = quick_gelu if config.hidden_act == "quick_gelu" else F.gelu

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class CLIPEncoderLayer(nn.Module):
    """Pre-LN residual block: x + attn(ln1(x)), then x + mlp(ln2(x))."""

    def __init__(self, config: CLIPTextConfig) -> None:
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.self_attn = CLIPAttention(config)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = CLIPMLP(config)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class CLIPEmbeddings(nn.Module):
    def __init__(self, config: CLIPTextConfig) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embedding = nn.Embedding(config.max_position_embeddings, config.hidden_size)

    def forward(self, input_ids: Tensor) -> Tensor:
        # input_ids: (B, T) -> (B, T, D)
        return (
            self.token_embedding(input_ids) + self.position_embedding.weight[: input_ids.shape[1]]
        )


class CLIPEncoder(nn.Module):
    def __init__(self, config: CLIPTextConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            CLIPEncoderLayer(config) for _ in range(config.num_hidden_layers)
        )


class CLIPTextTransformer(nn.Module):
    """Embeddings, encoder layers and the final LayerNorm (HF ``text_model``)."""

    def __init__(self, config: CLIPTextConfig) -> None:
        super().__init__()
        self.embeddings = CLIPEmbeddings(config)
        self.encoder = CLIPEncoder(config)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)


@dataclass
class CLIPTextOutput:
    last_hidden_state: Tensor  # (B, T, D), after final_layer_norm
    pooled: Tensor  # (B, D): last_hidden_state at the EOS (argmax id) position
    text_embeds: Tensor | None  # (B, P): pooled @ text_projection, None without a projection
    hidden_states: tuple[Tensor, ...] | None  # L + 1 entries of (B, T, D), embeddings first


class CLIPTextModel(nn.Module):
    """CLIP text encoder; ``text_projection`` exists when ``config.projection_dim`` is set."""

    def __init__(self, config: CLIPTextConfig) -> None:
        super().__init__()
        self.config = config
        self.text_model = CLIPTextTransformer(config)
        self.text_projection = (
            nn.Linear(config.hidden_size, config.projection_dim, bias=False)
            if config.projection_dim is not None
            else None
        )

    def _check_ids(self, input_ids: Tensor) -> None:
        if not isinstance(input_ids, Tensor) or input_ids.ndim != 2:
            raise ValueError(
                f"input_ids must be a (B, T) tensor, got {getattr(input_ids, 'shape', input_ids)}"
            )
        if input_ids.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"input_ids must be int32/int64, got {input_ids.dtype}")
        if input_ids.shape[1] > self.config.max_position_embeddings:
            raise ValueError(
                f"sequence length {input_ids.shape[1]} exceeds max_position_embeddings="
                f"{self.config.max_position_embeddings}; split long prompts into chunks"
            )

    def forward(self, input_ids: Tensor, output_hidden_states: bool = False) -> CLIPTextOutput:
        """Run all layers; pooled output taken at ``input_ids.argmax(-1)`` over the vocabulary's
        ids (the first EOS for the CLIP vocabulary, as open_clip/sgm and HF do)."""
        self._check_ids(input_ids)
        tm = self.text_model
        x = tm.embeddings(input_ids)  # (B, T, D)
        hidden = [x]
        for layer in tm.encoder.layers:
            x = layer(x)
            hidden.append(x)
        last = tm.final_layer_norm(x)
        # ids past the vocabulary (textual-inversion embeddings) never mark the EOS
        eos = torch.where(input_ids < self.config.vocab_size, input_ids, -1).argmax(dim=-1)
        pooled = last[torch.arange(last.shape[0], device=last.device), eos]
        embeds = self.text_projection(pooled) if self.text_projection is not None else None
        return CLIPTextOutput(last, pooled, embeds, tuple(hidden) if output_hidden_states else None)

    def hidden_state(self, input_ids: Tensor, layer: int = -1, final_norm: bool = True) -> Tensor:
        """(B, T, D) output of one layer, running only the layers needed. ``layer`` indexes
        ``hidden_states`` (-1 last layer, -2 penultimate, 0 embeddings); ``final_norm`` applies
        ``final_layer_norm`` to it (SD1 clip-skip, SD2 penultimate) or not (SDXL)."""
        self._check_ids(input_ids)
        n = self.config.num_hidden_layers
        index = layer + n + 1 if layer < 0 else layer
        if not 0 <= index <= n:
            raise ValueError(f"layer must be in [-{n + 1}, {n}] for a {n}-layer model, got {layer}")
        tm = self.text_model
        x = tm.embeddings(input_ids)
        for block in tm.encoder.layers[:index]:
            x = block(x)
        return tm.final_layer_norm(x) if final_norm else x


def load_text_state_dict(model: CLIPTextModel, state_dict: dict[str, Tensor]) -> None:
    """Strictly load HF-layout weights (``checkpoints.strict``: a ``ValueError`` names missing,
    unexpected and wrongly shaped keys). HF's ``text_model.embeddings.position_ids`` buffer is
    ignored."""
    given = {k: v for k, v in state_dict.items() if k != "text_model.embeddings.position_ids"}
    load_strict(model, given, "CLIP text state dict")
