"""minGPT hyper-parameters (taming-transformers' ``GPT``), the transformer over VQGAN codes."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["GPTConfig"]


@dataclass
class GPTConfig:
    """minGPT hyper-parameters; defaults are those of taming's ``GPT`` constructor."""

    vocab_size: int
    block_size: int
    n_layer: int = 12
    n_head: int = 8
    n_embd: int = 256
    embd_pdrop: float = 0.0
    resid_pdrop: float = 0.0
    attn_pdrop: float = 0.0
    n_unmasked: int = 0

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) < 1:
                raise ValueError(f"GPTConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if not 0 <= self.n_unmasked <= self.block_size:
            raise ValueError(f"n_unmasked must be in [0, block_size], got {self.n_unmasked}")
        for name in ("embd_pdrop", "resid_pdrop", "attn_pdrop"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"GPTConfig.{name} must be in [0, 1), got {getattr(self, name)}")
