"""Weight deltas of the LoRA family: Delta W of one module from the tensors a file stores for it.

* LoRA / LoCon (Hu et al. 2021; kohya, LyCORIS LoCon): ``dW = up @ down``; for a conv ``down``
  holds the kernel (``(r, in, kh, kw)``) and ``up`` is 1x1; with a Tucker core ``mid``
  (LyCORIS ``use_tucker``) ``dW = einsum("n m k l, i n, m j -> i j k l", mid, up, down)``.
* LoHa (LyCORIS, Hyeon-Woo et al. 2022 "FedPara"): ``dW = (w1_a @ w1_b) * (w2_a @ w2_b)``
  (Hadamard product), each factor optionally rebuilt from a Tucker core ``t1`` / ``t2``.
* LoKr (LyCORIS, Yeh et al. 2023): ``dW = kron(w1, w2)``, each side full or ``a @ b``.
* full (LyCORIS "full" / ``diff``): ``dW`` stored as is.

Every delta is scaled by ``alpha / dim`` (``dim`` the rank: ``down.shape[0]`` for LoRA,
``w1_b.shape[0]`` for LoHa, ``w1_b`` / ``w2_b`` for LoKr; 1 without an alpha or a rank), as
A1111's ``extensions-builtin/Lora/network_*.py`` and kohya's ``networks/lora.py``. The result is
float32 with the target's shape; a delta with the target's element count but another shape
(a linear LoRA on a 1x1 conv) is reshaped, as A1111 does.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

__all__ = ["KINDS", "layer_delta", "layer_kind"]

# tensor names (the part of a key after the module name) of each kind
KINDS: dict[str, tuple[str, ...]] = {
    "lora": ("lora_up.weight", "lora_down.weight", "lora_mid.weight"),
    "loha": ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2"),
    "lokr": ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2"),
    "full": ("diff",),
}
_REQUIRED: dict[str, tuple[tuple[str, ...], ...]] = {
    "lora": (("lora_up.weight",), ("lora_down.weight",)),
    "loha": (("hada_w1_a",), ("hada_w1_b",), ("hada_w2_a",), ("hada_w2_b",)),
    "lokr": (("lokr_w1", "lokr_w1_a"), ("lokr_w2", "lokr_w2_a")),
    "full": (("diff",),),
}


def layer_kind(tensors: Mapping[str, Tensor], name: str) -> str:
    """The kind of one module's tensors; ValueError naming the module when it is incomplete."""
    kinds = [k for k, names in KINDS.items() if any(n in tensors for n in names)]
    if len(kinds) != 1:
        found = sorted(tensors)
        raise ValueError(f"{name}: cannot tell the adapter type from the tensors {found}")
    kind = kinds[0]
    for options in _REQUIRED[kind]:
        if not any(o in tensors for o in options):
            raise ValueError(f"{name}: {kind} tensors without {' or '.join(options)}")
    return kind


def _mat(t: Tensor) -> Tensor:
    return t.float().flatten(1)


def _tucker(t: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """LyCORIS ``rebuild_tucker``: einsum("i j k l, j r, i p -> p r k l", t, b, a)."""
    return torch.einsum("i j k l, j r, i p -> p r k l", t.float(), _mat(b), _mat(a))


def _rank(kind: str, t: Mapping[str, Tensor]) -> int | None:
    """``dim`` of the alpha / dim scale (A1111's ``network_*.py``)."""
    if kind == "lora":
        return t["lora_down.weight"].shape[0]
    if kind == "loha":
        return t["hada_w1_b"].shape[0]
    for name in ("lokr_w1_b", "lokr_w2_b"):  # kind == "lokr"
        if name in t:
            return t[name].shape[0]
    return None


# Each kind applies the scale ``s`` to its smallest factor, so the full-size delta is written once.
def _lora(t: Mapping[str, Tensor], s: float) -> Tensor:
    up, down = t["lora_up.weight"], t["lora_down.weight"]
    if "lora_mid.weight" in t:
        mid = t["lora_mid.weight"].float() * s
        return torch.einsum("n m k l, i n, m j -> i j k l", mid, _mat(up), _mat(down))
    if up.ndim == 4 and up.shape[2:] != (1, 1):
        raise ValueError(f"lora_up with a {tuple(up.shape[2:])} kernel (expected 1x1)")
    delta = (_mat(up) * s) @ _mat(down)  # (out, in * kh * kw)
    return delta.reshape(up.shape[0], *down.shape[1:]) if down.ndim == 4 else delta


def _loha(t: Mapping[str, Tensor], s: float) -> Tensor:
    w1a, w1b, w2a, w2b = (t[f"hada_{n}"] for n in ("w1_a", "w1_b", "w2_a", "w2_b"))
    w1 = _tucker(t["hada_t1"], w1a, w1b) if "hada_t1" in t else _mat(w1a) @ _mat(w1b)
    w2 = _tucker(t["hada_t2"], w2a, w2b) if "hada_t2" in t else _mat(w2a) @ _mat(w2b)
    return w1.mul_(s).mul_(w2)


def _lokr(t: Mapping[str, Tensor], s: float) -> Tensor:
    w1 = t["lokr_w1"].float() if "lokr_w1" in t else _mat(t["lokr_w1_a"]) @ _mat(t["lokr_w1_b"])
    if "lokr_w2" in t:
        w2 = t["lokr_w2"].float()
    elif "lokr_t2" in t:
        w2 = _tucker(t["lokr_t2"], t["lokr_w2_a"], t["lokr_w2_b"])
    else:
        w2 = _mat(t["lokr_w2_a"]) @ _mat(t["lokr_w2_b"])
    if w2.ndim == 4:  # a conv: kron over (out, in), the kernel comes from w2
        w1 = w1[..., None, None]
    return torch.kron(w1 * s, w2.contiguous())  # kron needs a contiguous w2


def _full(t: Mapping[str, Tensor], s: float) -> Tensor:
    return t["diff"].float() * s


_BUILDERS = {"lora": _lora, "loha": _loha, "lokr": _lokr, "full": _full}


def layer_delta(
    tensors: Mapping[str, Tensor],
    shape: torch.Size,
    alpha: float | None,
    name: str,
    multiplier: float = 1.0,
    base: Tensor | None = None,
) -> Tensor:
    """float32 ``multiplier * alpha / dim * Delta W`` of ``shape`` from one module's tensors.

    With ``base`` (the current weight): the merged weight ``base + delta``, summed in float32
    and rounded once to ``base``'s dtype. A plain LoRA then goes through ``addmm`` in blocks of
    rows that stay in the CPU cache, so no full-size float32 tensor is written and read back:
    applying an SD 1.5 LoRA takes less than half the time (``benchmarks/lora_apply.py``)."""
    kind = layer_kind(tensors, name)
    dim = _rank(kind, tensors)
    scale = multiplier * (alpha / dim if alpha is not None and dim else 1.0)
    fused = base is not None and kind == "lora" and "lora_mid.weight" not in tensors
    try:
        if fused:
            up, down = tensors["lora_up.weight"], tensors["lora_down.weight"]
            one_by_one = up.ndim < 4 or up.shape[2:] == (1, 1)
            if one_by_one and up.shape[0] * _mat(down).shape[1] == shape.numel():
                return _merged_lora(base, _mat(up), _mat(down), scale)
        delta = _BUILDERS[kind](tensors, scale)  # a misfit raises here or below
    except (RuntimeError, IndexError, ValueError) as exc:
        shapes = {k: tuple(v.shape) for k, v in tensors.items()}
        raise ValueError(f"{name}: {kind} tensors do not fit together {shapes}: {exc}") from None
    if delta.numel() != shape.numel():
        raise ValueError(
            f"{name}: the {kind} delta has shape {tuple(delta.shape)}, the model's weight "
            f"{tuple(shape)}"
        )
    delta = delta.reshape(shape)
    return delta if base is None else delta.add_(base).to(base.dtype)


_BLOCK = 2**20  # elements per block of the fused merge (a few MiB of float32)


def _merged_lora(base: Tensor, up: Tensor, down: Tensor, scale: float) -> Tensor:
    """``base + scale * up @ down`` in float32, rounded to ``base``'s dtype, block by block."""
    flat = base.reshape(up.shape[0], -1)
    out = torch.empty_like(flat)
    rows = max(1, _BLOCK // flat.shape[1])
    for r in range(0, flat.shape[0], rows):
        block = torch.addmm(flat[r : r + rows].float(), up[r : r + rows], down, alpha=scale)
        out[r : r + rows] = block
    return out.reshape(base.shape)
