"""Gumbel-softmax quantiser (Jang et al. 2016) as in taming-transformers' ``GumbelQuantize``.

A 1x1 convolution ``proj`` maps encoder features (B, num_hiddens, H, W) to logits over
``n_embed`` codes; ``F.gumbel_softmax`` (hard one-hot with straight-through gradients, or soft)
mixes the codes ``embed.weight`` (n_embed, embedding_dim). The loss is the KL divergence of the
code posterior to a uniform prior, ``kl_weight * mean_hw sum_k q_k log(q_k * K)``.

The Gumbel noise comes from the global RNG (as in taming): seed with ``torch.manual_seed``.
The temperature is annealed during training; :func:`cosine_temperature` is taming's
``LambdaWarmUpCosineScheduler`` curve and :func:`exponential_temperature` DALL-E's decay.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from genmodels.models.quantize import (
    QuantizeInfo,
    RemapSpec,
    check_code_indices,
    check_unknown_index,
    load_remap,
    perplexity,
    remap_to_used,
    unmap_to_all,
)

__all__ = ["GumbelQuantize", "gumbel_kl", "cosine_temperature", "exponential_temperature"]


def gumbel_kl(logits: Tensor, n_embed: int) -> Tensor:
    """KL(q || uniform over n_embed) averaged over positions; logits (B, K, H, W) -> ()."""
    qy = F.softmax(logits, dim=1)
    return torch.sum(qy * torch.log(qy * n_embed + 1e-10), dim=1).mean()


class GumbelQuantize(nn.Module):
    """Gumbel-softmax quantiser with taming's parameters ``proj.weight/bias`` and ``embed.weight``.

    In eval mode the one-hot is always hard; in training ``straight_through`` picks hard
    (straight-through) or soft Gumbel-softmax samples. ``temp_init`` is the temperature used
    when ``forward`` gets no ``temp``. ``remap`` / ``unknown_index`` as in VectorQuantizer:
    only the logits of the used codes take part.
    """

    def __init__(
        self,
        num_hiddens: int,
        embedding_dim: int,
        n_embed: int,
        straight_through: bool = True,
        kl_weight: float = 5e-4,
        temp_init: float = 1.0,
        remap: RemapSpec | None = None,
        unknown_index: int | str = "random",
    ) -> None:
        super().__init__()
        if min(num_hiddens, embedding_dim, n_embed) < 1:
            raise ValueError(
                f"num_hiddens, embedding_dim and n_embed must be positive, got "
                f"{num_hiddens}, {embedding_dim}, {n_embed}"
            )
        if temp_init <= 0:
            raise ValueError(f"temp_init must be > 0, got {temp_init}")
        self.num_hiddens, self.embedding_dim, self.n_embed = num_hiddens, embedding_dim, n_embed
        self.straight_through, self.kl_weight, self.temperature = (
            straight_through,
            kl_weight,
            temp_init,
        )
        self.proj = nn.Conv2d(num_hiddens, n_embed, 1)
        self.embed = nn.Embedding(n_embed, embedding_dim)
        self.remap = remap
        self.re_embed = n_embed
        if remap is not None:
            used = load_remap(remap)
            if int(used.min()) < 0 or int(used.max()) >= n_embed:
                raise ValueError(f"remap indices must lie in [0, {n_embed}), got {used.tolist()}")
            self.register_buffer("used", used)
            self.unknown_index = check_unknown_index(unknown_index, used.numel())
            self.re_embed = used.numel() + (unknown_index == "extra")

    def forward(
        self, z: Tensor, temp: float | None = None, return_logits: bool = False
    ) -> tuple[Tensor, Tensor, QuantizeInfo] | tuple[Tensor, Tensor, QuantizeInfo, Tensor]:
        if z.ndim != 4 or z.shape[1] != self.num_hiddens:
            raise ValueError(
                f"expected z of shape (B, {self.num_hiddens}, H, W), got {tuple(z.shape)}"
            )
        hard = self.straight_through if self.training else True
        temp = self.temperature if temp is None else temp
        logits = self.proj(z)  # (B, K, H, W)
        if self.remap is not None:
            logits = logits[:, self.used]  # (B, M, H, W): only the used codes compete
        soft_one_hot = F.gumbel_softmax(logits, tau=temp, dim=1, hard=hard)
        if self.remap is not None:
            full = soft_one_hot.new_zeros(z.shape[0], self.n_embed, *z.shape[2:])
            full[:, self.used] = soft_one_hot
            soft_one_hot = full
        z_q = torch.einsum("bnhw,nd->bdhw", soft_one_hot, self.embed.weight)
        loss = self.kl_weight * gumbel_kl(logits, self.n_embed)

        ind = soft_one_hot.argmax(dim=1)  # (B, H, W)
        counts = torch.bincount(ind.reshape(-1), minlength=self.n_embed)
        if self.remap is not None:
            ind = remap_to_used(ind, self.used, self.unknown_index)
        info = QuantizeInfo(perplexity(counts), counts, ind)
        if return_logits:
            return z_q, loss, info, logits
        return z_q, loss, info

    def get_codebook_entry(self, indices: Tensor, shape: Sequence[int] | None = None) -> Tensor:
        """Codes for ``indices``: (B, C, H, W) given ``shape=(B, H, W, C)`` or (B, H, W) indices."""
        indices, shape = check_code_indices(indices, shape, self.re_embed, self.embedding_dim)
        if self.remap is not None:
            indices = unmap_to_all(indices, self.used)
        z_q = F.embedding(indices.reshape(-1), self.embed.weight)  # (N, C)
        if shape is None:
            return z_q.view(*indices.shape, self.embedding_dim)
        return rearrange(z_q.view(shape), "b h w c -> b c h w").contiguous()


def cosine_temperature(
    step: int,
    warm_up_steps: int = 0,
    max_decay_steps: int = 1_000_001,
    t_start: float = 0.9,
    t_max: float = 0.9,
    t_min: float = 1e-6,
) -> float:
    """Linear warm-up t_start -> t_max, then cosine decay to t_min at ``max_decay_steps``.

    The curve of taming's ``LambdaWarmUpCosineScheduler``; the defaults are those of its Gumbel
    VQGAN configs.
    """
    if step < warm_up_steps:
        return (t_max - t_start) / warm_up_steps * step + t_start
    t = min((step - warm_up_steps) / (max_decay_steps - warm_up_steps), 1.0)
    return t_min + 0.5 * (t_max - t_min) * (1 + math.cos(t * math.pi))


def exponential_temperature(
    step: int, t_init: float = 1.0, rate: float = 1e-5, t_min: float = 0.0625
) -> float:
    """``max(t_min, t_init * exp(-rate * step))`` (the DALL-E dVAE schedule, Ramesh et al. 2021)."""
    return max(t_min, t_init * math.exp(-rate * step))
