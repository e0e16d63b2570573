"""Autoregressive sampling of code sequences from a :class:`~genmodels.models.gpt.GPT`.

* :func:`top_k_filter` / :func:`top_p_filter`: keep the k most likely tokens (minGPT) / the
  smallest set whose probability reaches p (nucleus sampling, Holtzman et al. 2019).
* :func:`sample_next`: temperature, filtering, then one draw per sample from its own CPU
  generator (seeds ``seed, seed+1, ...``), so a batch of N equals N single runs on any device.
* :func:`sample`: extend a prefix (SOS, class tokens or conditioning codes) by ``steps``
  tokens, with a KV cache (one new token per forward) or without (the whole sequence each
  step, minGPT); both give the same tokens for the same seeds.
* :func:`sample_sliding_window`: codes for an (H, W) grid larger than the training window
  (taming's ``sample_conditional``): each position is predicted from the (wh, ww) window of
  the grid that holds it, placed so the position sits at the window centre away from the
  borders. Works on raster-order codes (identity permuter).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from genmodels.models.gpt import GPT

__all__ = [
    "top_k_filter",
    "top_p_filter",
    "make_generators",
    "sample_next",
    "sample",
    "sample_sliding_window",
    "window_start",
]

Generators = int | Sequence[int] | Sequence[torch.Generator] | None


def top_k_filter(logits: Tensor, k: int) -> Tensor:
    """Set logits below the k-th largest of each row to -inf (ties with it are kept), (B, V)."""
    if k < 1:
        raise ValueError(f"top_k must be >= 1, got {k}")
    k = min(k, logits.shape[-1])
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: Tensor, p: float, min_tokens_to_keep: int = 1) -> Tensor:
    """Keep the most likely tokens until their total probability reaches ``p``, (B, V).

    A token is dropped when the probability of the tokens ranked above it is already >= p,
    so the token that crosses p is kept (as in HF ``TopPLogitsWarper``).
    """
    if not 0.0 < p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {p}")
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = sorted_logits.softmax(-1)
    drop_sorted = (probs.cumsum(-1) - probs) >= p  # the mass ranked above this token
    drop_sorted[..., :min_tokens_to_keep] = False
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def make_generators(generators: Generators, batch: int) -> list[torch.Generator] | None:
    """``int`` seed -> CPU generators seeded seed, seed+1, ...; a list of ints or generators is
    taken per sample; ``None`` -> draw from the global RNG."""
    if generators is None:
        return None
    if isinstance(generators, int):
        generators = [generators + i for i in range(batch)]
    gens = [
        g if isinstance(g, torch.Generator) else torch.Generator("cpu").manual_seed(int(g))
        for g in generators
    ]
    if len(gens) != batch:
        raise ValueError(f"expected {batch} seeds or generators (one per sample), got {len(gens)}")
    return gens


def sample_next(
    logits: Tensor,
    generators: list[torch.Generator] | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    greedy: bool = False,
) -> Tensor:
    """Next tokens (B,) from last-position logits (B, V)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    logits = logits.float() / temperature
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    if greedy:
        return logits.argmax(-1)
    probs = F.softmax(logits, dim=-1)
    if generators is None:
        return torch.multinomial(probs, 1).squeeze(1)
    probs = probs.cpu()  # the generators live on the CPU: same draws on every device
    draws = [torch.multinomial(probs[i], 1, generator=g) for i, g in enumerate(generators)]
    return torch.cat(draws).to(logits.device)


def sample(
    model: GPT,
    prefix: Tensor,
    steps: int,
    generators: Generators = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    greedy: bool = False,
    use_cache: bool = True,
    callback: Callable[[int, Tensor], None] | None = None,
) -> Tensor:
    """Tokens (B, steps) that continue ``prefix`` (B, P), P >= 1.

    ``callback(step, logits)`` sees the (B, V) logits of each step before filtering.
    The prefix and all but the last sampled token must fit the model: P + steps - 1 <=
    block_size (use :func:`sample_sliding_window` for larger code grids).
    """
    if prefix.ndim != 2 or prefix.shape[1] < 1:
        raise ValueError(f"prefix must be (B, P) tokens with P >= 1, got {tuple(prefix.shape)}")
    if prefix.shape[1] + steps - 1 > model.block_size:
        raise ValueError(
            f"prefix of {prefix.shape[1]} tokens + {steps} steps needs a context of "
            f"{prefix.shape[1] + steps - 1} > block_size {model.block_size}"
        )
    gens = make_generators(generators, prefix.shape[0])
    was_training = model.training
    model.eval()
    cache = model.new_cache() if use_cache else None
    x, new = prefix, prefix
    out = []
    with torch.no_grad():
        for step in range(steps):
            logits, _ = model(new if use_cache else x, cache=cache)
            logits = logits[:, -1]
            if callback is not None:
                callback(step, logits)
            token = sample_next(logits, gens, temperature, top_k, top_p, greedy)[:, None]
            out.append(token)
            x = torch.cat((x, token), dim=1)
            new = token
    model.train(was_training)
    return torch.cat(out, dim=1)


def window_start(i: int, size: int, window: int) -> int:
    """First row (or column) of the window around position ``i`` of ``size`` (taming's rule).

    ``i`` sits at offset ``window // 2`` in the window, which is clamped to [0, size); for even
    windows this is taming's rule (local_i = i near the start, window - (size - i) near the end).
    """
    return min(max(i - window // 2, 0), size - window)


def sample_sliding_window(
    model: GPT,
    shape: tuple[int, int],
    window: tuple[int, int],
    prefix: Tensor | None = None,
    cond_grid: Tensor | None = None,
    generators: Generators = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    greedy: bool = False,
    callback: Callable[[int, Tensor], None] | None = None,
) -> Tensor:
    """Codes (B, H, W) in raster order, sampled position by position through a moving window.

    The model input is ``prefix`` (B, P) (SOS or class tokens, not cropped), then the window of
    ``cond_grid`` (B, H, W) (codes of a conditioning image, cropped like the codes), then the
    window of the codes. Needs P + wh*ww (+ wh*ww for cond_grid) - 1 <= block_size. A window
    larger than the grid is cut to the grid. ``callback(step, logits)`` sees (and may change
    in place) the (B, V) logits of each position before filtering, as in :func:`sample`.
    """
    (h, w), (wh, ww) = shape, window
    wh, ww = min(wh, h), min(ww, w)
    if wh < 1 or ww < 1:
        raise ValueError(f"window and shape must be positive, got {window} and {shape}")
    ref = prefix if prefix is not None else cond_grid
    if ref is None:
        raise ValueError("need a prefix (SOS or class tokens) and/or a cond_grid to start from")
    b = ref.shape[0]
    if cond_grid is not None and tuple(cond_grid.shape) != (b, h, w):
        raise ValueError(
            f"cond_grid must be (B, H, W) = ({b}, {h}, {w}), got {tuple(cond_grid.shape)}"
        )
    n_prefix = (0 if prefix is None else prefix.shape[1]) + (0 if cond_grid is None else wh * ww)
    if n_prefix + wh * ww - 1 > model.block_size:
        raise ValueError(
            f"window {wh}x{ww} with {n_prefix} conditioning tokens needs "
            f"{n_prefix + wh * ww - 1} > block_size {model.block_size}"
        )
    gens = make_generators(generators, b)
    codes = torch.zeros(b, h, w, dtype=torch.long, device=ref.device)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for i in range(h):
            i0 = window_start(i, h, wh)
            for j in range(w):
                j0 = window_start(j, w, ww)
                crop = (slice(None), slice(i0, i0 + wh), slice(j0, j0 + ww))
                parts = [] if prefix is None else [prefix]
                if cond_grid is not None:
                    parts.append(cond_grid[crop].reshape(b, -1))
                parts.append(codes[crop].reshape(b, -1))
                seq = torch.cat(parts, dim=1)
                logits, _ = model(seq[:, :-1])
                pos = n_prefix - 1 + (i - i0) * ww + (j - j0)
                logits = logits[:, pos]  # (B, V): the logits that predict code (i, j)
                if callback is not None:
                    callback(i * w + j, logits)
                codes[:, i, j] = sample_next(logits, gens, temperature, top_k, top_p, greedy)
    model.train(was_training)
    return codes
