"""GPT over VQ codes: minGPT's decoder-only transformer as used by taming-transformers.

Parameter names follow taming's ``mingpt.GPT`` so its transformer checkpoints load with
``strict=True``: ``tok_emb.weight``, ``pos_emb`` (1, block_size, n_embd),
``blocks.N.ln1/ln2``, ``blocks.N.attn.key/query/value/proj``, ``blocks.N.attn.mask`` (the
causal mask buffer), ``blocks.N.mlp.0/2`` (4x GELU MLP), ``ln_f`` and ``head.weight``.

Attention runs through ``F.scaled_dot_product_attention``. ``n_unmasked`` > 0 lets the first
``n_unmasked`` positions attend to each other in both directions (taming's option). A
:class:`KVCache` keeps the keys and values of the tokens seen so far, so sampling feeds one
new token per step.

Conditioning is a prefix of tokens in the same vocabulary (taming's ``Net2NetTransformer``):
an SOS token (:func:`sos_prefix`), class token(s) (:func:`class_prefix`), or the codes of
another VQ-encoded image. :func:`teacher_forcing` builds the training logits and targets,
with taming's ``pkeep`` corruption of the input codes (:func:`corrupt_tokens`).

A taming ``Net2NetTransformer`` checkpoint keeps the GPT under ``transformer.``; loading it is
:mod:`genmodels.checkpoints.taming`'s job (``load_taming_gpt``, ``gpt_config_from_state_dict``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from genmodels.configs.gpt import GPTConfig

__all__ = [
    "GPT",
    "KVCache",
    "CausalSelfAttention",
    "Block",
    "corrupt_tokens",
    "sos_prefix",
    "class_prefix",
    "teacher_forcing",
    "next_token_loss",
]


@dataclass
class KVCache:
    """Keys and values of the tokens seen so far, one (k, v) pair per layer, (B, nh, T, hs)."""

    keys: list[Tensor | None] = field(default_factory=list)
    values: list[Tensor | None] = field(default_factory=list)

    @classmethod
    def empty(cls, n_layer: int) -> KVCache:
        return cls([None] * n_layer, [None] * n_layer)

    @property
    def length(self) -> int:
        k = self.keys[0] if self.keys else None
        return 0 if k is None else k.shape[2]


class CausalSelfAttention(nn.Module):
    """Multi-head masked self-attention with separate key/query/value projections (minGPT)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.key = nn.Linear(config.n_embd, config.n_embd)
        self.query = nn.Linear(config.n_embd, config.n_embd)
        self.value = nn.Linear(config.n_embd, config.n_embd)
        self.proj = nn.Linear(config.n_embd, config.n_embd)
        self.attn_pdrop = config.attn_pdrop
        self.resid_drop = nn.Dropout(config.resid_pdrop)
        self.n_head, self.n_unmasked = config.n_head, config.n_unmasked
        mask = torch.tril(torch.ones(config.block_size, config.block_size))
        mask[: config.n_unmasked, : config.n_unmasked] = 1
        self.register_buffer("mask", mask.view(1, 1, config.block_size, config.block_size))

    def forward(self, x: Tensor, cache: KVCache | None = None, layer: int = 0) -> Tensor:
        past = 0 if cache is None or cache.keys[layer] is None else cache.keys[layer].shape[2]
        t = x.shape[1]
        k, q, v = (
            rearrange(f(x), "b t (nh hs) -> b nh t hs", nh=self.n_head)
            for f in (self.key, self.query, self.value)
        )  # (B, nh, T, hs)
        if past:
            k = torch.cat([cache.keys[layer], k], dim=2)  # (B, nh, past + T, hs)
            v = torch.cat([cache.values[layer], v], dim=2)
        if cache is not None:
            cache.keys[layer], cache.values[layer] = k, v
        dropout_p = self.attn_pdrop if self.training else 0.0
        if past == 0 and self.n_unmasked == 0:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
        else:
            mask = self.mask[:, :, past : past + t, : past + t].bool()  # (1, 1, T, past + T)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
        y = rearrange(y, "b nh t hs -> b t (nh hs)")
        return self.resid_drop(self.proj(y))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln1(x)), then x + mlp(ln2(x))."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(config.n_embd)
        self.ln2 = nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.mlp = nn.Sequential(
            nn.Linear(config.n_embd, 4 * config.n_embd),
            nn.GELU(),
            nn.Linear(4 * config.n_embd, config.n_embd),
            nn.Dropout(config.resid_pdrop),
        )

    def forward(self, x: Tensor, cache: KVCache | None = None, layer: int = 0) -> Tensor:
        x = x + self.attn(self.ln1(x), cache, layer)
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """Decoder-only transformer over token indices with a context of ``block_size`` tokens."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.block_size = config.block_size
        self.tok_emb = nn.Embedding(config.vocab_size, config.n_embd)
        self.pos_emb = nn.Parameter(torch.zeros(1, config.block_size, config.n_embd))
        self.drop = nn.Dropout(config.embd_pdrop)
        self.blocks = nn.Sequential(*[Block(config) for _ in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd)
        self.head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        """minGPT's init: N(0, 0.02) weights, zero biases, unit LayerNorm; ``pos_emb`` zeros."""
        if isinstance(module, nn.Linear | nn.Embedding):
            module.weight.data.normal_(mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                module.bias.data.zero_()
        elif isinstance(module, nn.LayerNorm):
            module.bias.data.zero_()
            module.weight.data.fill_(1.0)

    def new_cache(self) -> KVCache:
        """An empty KV cache for incremental decoding with this model."""
        return KVCache.empty(self.config.n_layer)

    def forward(
        self,
        idx: Tensor,
        embeddings: Tensor | None = None,
        targets: Tensor | None = None,
        cache: KVCache | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """idx (B, T) -> (logits (B, T', vocab), loss or None); T' = T + prefix embeddings.

        ``embeddings`` (B, P, n_embd) are prepended to the token embeddings (taming).
        ``cache`` holds earlier tokens: positions continue from ``cache.length`` and the new
        keys/values are appended to it.
        """
        if idx.ndim != 2 or idx.is_floating_point():
            raise ValueError(f"idx must be integer token indices (B, T), got {tuple(idx.shape)}")
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.config.vocab_size):
            raise ValueError(f"token indices must lie in [0, {self.config.vocab_size})")
        x = self.tok_emb(idx)  # (B, T, C)
        if embeddings is not None:
            if embeddings.ndim != 3 or embeddings.shape[0] != idx.shape[0]:
                raise ValueError(
                    f"embeddings must be (B={idx.shape[0]}, P, {self.config.n_embd}), "
                    f"got {tuple(embeddings.shape)}"
                )
            x = torch.cat((embeddings, x), dim=1)
        start = 0 if cache is None else cache.length
        t = x.shape[1]
        if start + t > self.block_size:
            raise ValueError(f"sequence of {start + t} tokens exceeds block_size {self.block_size}")
        x = self.drop(x + self.pos_emb[:, start : start + t])
        for i, block in enumerate(self.blocks):
            x = block(x, cache, i)
        logits = self.head(self.ln_f(x))  # (B, T', vocab)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        return logits, loss


def corrupt_tokens(
    indices: Tensor, pkeep: float, vocab_size: int, generator: torch.Generator | None = None
) -> Tensor:
    """Keep each token with probability ``pkeep``, else replace it by a uniform random token.

    taming's ``Net2NetTransformer`` does this to the input codes during training so the model
    learns to continue from imperfect samples.
    """
    if not 0.0 <= pkeep <= 1.0:
        raise ValueError(f"pkeep must be in [0, 1], got {pkeep}")
    device = indices.device if generator is None else generator.device
    keep = torch.rand(indices.shape, generator=generator, device=device) < pkeep
    rand = torch.randint(0, vocab_size, indices.shape, generator=generator, device=device)
    return torch.where(keep.to(indices.device), indices, rand.to(indices))


def sos_prefix(batch: int, sos_token: int = 0, device: torch.device | str | None = None) -> Tensor:
    """Unconditional prefix: one start-of-sequence token per sample, (B, 1)."""
    return torch.full((batch, 1), sos_token, dtype=torch.long, device=device)


def class_prefix(labels: Tensor, n_tokens: int = 1, offset: int = 0) -> Tensor:
    """Class-conditional prefix: token ``offset + label`` repeated ``n_tokens`` times, (B, n).

    taming's class-conditional models use the label itself as the token (``offset=0``);
    ``offset`` places the class tokens after the image codes in a shared vocabulary.
    """
    if labels.ndim != 1 or labels.is_floating_point():
        raise ValueError(f"labels must be integer class ids (B,), got {tuple(labels.shape)}")
    return (labels.long() + offset).unsqueeze(1).repeat(1, n_tokens)


def teacher_forcing(
    model: GPT,
    c_indices: Tensor,
    z_indices: Tensor,
    pkeep: float = 1.0,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Logits (B, Tz, vocab) for each code of ``z_indices`` (B, Tz) given the prefix (B, Tc).

    Input is ``cat(c, z)[:, :-1]`` (z corrupted with ``pkeep`` in training mode); the logits
    from position Tc-1 on predict z (taming's ``Net2NetTransformer.forward``). Returns
    (logits, target = z_indices).
    """
    if c_indices.ndim != 2 or z_indices.ndim != 2 or c_indices.shape[0] != z_indices.shape[0]:
        raise ValueError(
            f"c_indices and z_indices must be (B, Tc) and (B, Tz), got "
            f"{tuple(c_indices.shape)} and {tuple(z_indices.shape)}"
        )
    if c_indices.shape[1] < 1:
        raise ValueError("the prefix c_indices needs at least one token (e.g. an SOS token)")
    a_indices = z_indices
    if model.training and pkeep < 1.0:
        a_indices = corrupt_tokens(z_indices, pkeep, model.config.vocab_size, generator)
    cz = torch.cat((c_indices, a_indices), dim=1)
    logits, _ = model(cz[:, :-1])
    return logits[:, c_indices.shape[1] - 1 :], z_indices


def next_token_loss(
    model: GPT,
    c_indices: Tensor,
    z_indices: Tensor,
    pkeep: float = 1.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Per-sample mean cross-entropy of the codes given the prefix, (B,)."""
    logits, target = teacher_forcing(model, c_indices, z_indices, pkeep, generator)
    ce = F.cross_entropy(logits.transpose(1, 2), target, reduction="none")  # (B, Tz)
    return ce.mean(1)
