"""Config of the BERT encoder (Devlin et al. 2019) behind the MiniLM sentence encoder.

Field names are those of HF ``BertConfig`` / the model folder's ``config.json``, so a folder's
config reads in with ``bert_config_from_json``; only what our encoder implements is accepted
(absolute positions, exact GELU).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["MINILM_CONTEXT_LENGTH", "BertConfig", "bert_config_from_json"]

# all-MiniLM-L6-v2 context length for diffusion training: [CLS] + 30 WordPiece tokens + [SEP]
# (every emoji name of the built-in dataset fits; the model itself takes up to 512)
MINILM_CONTEXT_LENGTH = 32


@dataclass(frozen=True)
class BertConfig:
    """Hyper-parameters of a BERT encoder (defaults: all-MiniLM-L6-v2)."""

    vocab_size: int = 30522
    hidden_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name != "pad_token_id" and value <= 0:
                raise ValueError(f"BertConfig.{f.name} must be > 0, got {value}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by "
                f"num_attention_heads={self.num_attention_heads}"
            )
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(
                f"pad_token_id must be in [0, {self.vocab_size}), got {self.pad_token_id}"
            )


# config.json settings our encoder does not implement: key -> the only value accepted
_REQUIRED = {"model_type": "bert", "hidden_act": "gelu", "position_embedding_type": "absolute"}


def bert_config_from_json(path: str | Path) -> BertConfig:
    """``BertConfig`` of an HF ``config.json``; other keys (dropout, architectures) are ignored."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: BERT config.json does not exist")
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON: {exc}") from exc
    for key, want in _REQUIRED.items():
        if data.get(key, want) != want:
            raise ValueError(f"{path}: {key}={data[key]!r} is not supported (only {want!r})")
    names = [f.name for f in dataclasses.fields(BertConfig)]
    missing = [n for n in names if n not in data and n != "pad_token_id"]
    if missing:
        raise ValueError(f"{path}: missing BERT config keys {missing}")
    kwargs = {n: data[n] for n in names if n in data}
    for name, value in kwargs.items():
        kind = float if name == "layer_norm_eps" else int
        if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
            raise ValueError(f"{path}: {name} must be {kind.__name__}, got {value!r}")
    return BertConfig(**kwargs)
