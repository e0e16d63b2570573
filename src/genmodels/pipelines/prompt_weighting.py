"""A1111 prompt emphasis: ``(word:1.2)``, ``(word)`` = x1.1, ``[word]`` = /1.1, nesting, escapes
``\\(`` ``\\)`` ``\\[`` ``\\]`` ``\\\\`` and ``BREAK`` (stable-diffusion-webui ``prompt_parser.
parse_prompt_attention`` and ``sd_hijack_clip``'s "Original" emphasis).

* ``parse_prompt_attention(text)`` -> ``[(fragment, weight), ...]``; ``BREAK`` is ``("BREAK", -1)``.
* ``weighted_chunks(tokenizer, text)`` -> 75-token chunks with one multiplier per token: each
  fragment is tokenized on its own, chunks follow A1111's ``tokenize_line`` (comma backtrack,
  ``BREAK`` closes the chunk).
* ``apply_weights(hidden, multipliers)``: z * w, then rescaled so the mean of z is unchanged.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor

from genmodels.models.text.tokenizer import CLIPTokenizer, split_chunks

__all__ = ["BREAK", "apply_weights", "parse_prompt_attention", "weighted_chunks"]

ROUND_MULTIPLIER = 1.1
SQUARE_MULTIPLIER = 1 / 1.1
BREAK = ("BREAK", -1.0)

# the token alternatives of A1111's re_attention, in its order
_ATTENTION = re.compile(
    r"""
    \\\( | \\\) | \\\[ | \\\] | \\\\ | \\ |
    \( | \[ |
    :\s*([+-]?[.\d]+)\s*\) |
    \) | \] |
    [^\\()\[\]:]+ |
    :
    """,
    re.X,
)
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)

Chunk = tuple[list[int], list[float]]  # (token ids without BOS/EOS, one multiplier per token)


def parse_prompt_attention(text: str) -> list[tuple[str, float]]:
    """Split ``text`` into (fragment, weight) pairs; unclosed brackets apply to the end,
    adjacent fragments of equal weight are merged (as A1111)."""
    if not isinstance(text, str):
        raise ValueError(f"prompt must be a str, got {type(text).__name__}")
    res: list[list] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def multiply(start: int, factor: float) -> None:
        for item in res[start:]:
            item[1] *= factor

    for m in _ATTENTION.finditer(text):
        token, weight = m.group(0), m.group(1)
        if token.startswith("\\"):
            res.append([token[1:], 1.0])
        elif token == "(":
            round_open.append(len(res))
        elif token == "[":
            square_open.append(len(res))
        elif weight is not None and round_open:
            multiply(round_open.pop(), _to_float(weight))
        elif token == ")" and round_open:
            multiply(round_open.pop(), ROUND_MULTIPLIER)
        elif token == "]" and square_open:
            multiply(square_open.pop(), SQUARE_MULTIPLIER)
        else:
            for i, part in enumerate(_BREAK.split(token)):
                if i > 0:
                    res.append(list(BREAK))
                res.append([part, 1.0])
    for start in round_open:
        multiply(start, ROUND_MULTIPLIER)
    for start in square_open:
        multiply(start, SQUARE_MULTIPLIER)
    if not res:
        res = [["", 1.0]]
    merged: list[list] = [res[0]]
    for item in res[1:]:
        if item[1] == merged[-1][1]:
            merged[-1][0] += item[0]
        else:
            merged.append(item)
    return [(str(t), float(w)) for t, w in merged]


def _to_float(text: str) -> float:
    try:
        return float(text)
    except ValueError:  # e.g. "(a:1.2.3)": A1111 raises too; say where
        raise ValueError(f"bad emphasis weight {text!r} in prompt") from None


def weighted_chunks(tokenizer: CLIPTokenizer, text: str, comma_backtrack: int = 20) -> list[Chunk]:
    """A1111 ``tokenize_line``: chunks of at most ``context_length - 2`` tokens with weights.

    Each run of text between ``BREAK``s is chunked with the comma rule of ``split_chunks``;
    ``BREAK`` closes the current chunk (an empty one too). A prompt gives at least one chunk.
    """
    length = tokenizer.context_length - 2
    chunks: list[Chunk] = []
    ids: list[int] = []
    weights: list[float] = []

    def close(is_last: bool) -> None:
        if is_last and not ids and chunks:
            return
        start = 0
        for piece in split_chunks(ids, length, tokenizer.comma_token_id, comma_backtrack):
            chunks.append((piece, weights[start : start + len(piece)]))
            start += len(piece)

    for fragment, weight in parse_prompt_attention(text):
        if (fragment, weight) == BREAK:
            close(is_last=False)
            ids, weights = [], []
            continue
        tokens = tokenizer.encode(fragment)
        ids += tokens
        weights += [weight] * len(tokens)
    close(is_last=True)
    return chunks


def wrap_weights(weights: list[float], context_length: int) -> list[float]:
    """Multipliers for BOS + tokens + EOS + padding (1.0 everywhere but the tokens)."""
    return [1.0, *weights] + [1.0] * (context_length - 1 - len(weights))


def apply_weights(hidden: Tensor, multipliers: Tensor) -> Tensor:
    """A1111 "Original" emphasis: ``z * w`` rescaled to the original mean of ``z``.

    hidden (N, T, D), multipliers (N, T); the mean is taken per sequence (A1111 takes it over
    the whole batch of one chunk, which is the same when the batch repeats one prompt).
    """
    if multipliers.shape != hidden.shape[:2]:
        raise ValueError(
            f"multipliers must have shape {tuple(hidden.shape[:2])}, got {tuple(multipliers.shape)}"
        )
    w = multipliers.to(device=hidden.device, dtype=torch.float32)
    z = hidden.float()
    original_mean = z.mean(dim=(1, 2), keepdim=True)
    weighted = z * w[..., None]
    new_mean = weighted.mean(dim=(1, 2), keepdim=True)
    # unweighted sequences stay bit-identical; a zero new mean (A1111: inf/NaN) is not rescaled
    ratio = torch.where(new_mean == 0, 1.0, original_mean / new_mean)
    ratio = torch.where((w == 1).all(dim=1)[:, None, None], 1.0, ratio)
    return (weighted * ratio).to(hidden.dtype)
