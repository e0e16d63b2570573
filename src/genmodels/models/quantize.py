"""Vector quantisation bottleneck of VQ-VAE / VQGAN (van den Oord et al. 2017; Esser et al. 2021).

:class:`VectorQuantizer` maps encoder outputs ``z_e`` (B, C, H, W) to their nearest codebook
vectors and trains the codebook with

    loss = ||sg[z_e] - e||^2 + beta * ||z_e - sg[e]||^2          (codebook + commitment)

``legacy=True`` reproduces taming-transformers' released ``VectorQuantizer2`` (its default),
where beta multiplies the codebook term instead. Options beyond taming: EMA codebook updates
(VQ-VAE paper, appendix A.1), k-means initialisation from the first training batch, dead-code
restart, and l2-normalised (cosine) codes (Yu et al. 2021, ViT-VQGAN).

Shape conventions (taming's):

* ``forward(z)`` -> ``(z_q, loss, info)``; ``z_q`` (B, C, H, W) with straight-through
  gradients, ``loss`` a scalar, ``info`` a :class:`QuantizeInfo` that unpacks like taming's
  ``(perplexity, min_encodings, indices)`` triple. ``indices`` is flat (B*H*W,) in raster
  order, or (B, H, W) with ``sane_index_shape=True``.
* ``get_codebook_entry(indices, shape)``: ``indices`` (B, H, W), (B, H*W) or flat (B*H*W,);
  ``shape`` is ``(B, H, W, C)`` (taming) or ``None``, giving (B, C, H, W) for (B, H, W)
  indices and (..., C) rows otherwise.

Parameter names follow taming: ``embedding.weight`` (n_e, e_dim), the remap buffer ``used``;
EMA statistics live beside the weight as ``embedding.cluster_size`` / ``embedding.embed_avg``
(the names of taming's ``EmbeddingEMA``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

__all__ = [
    "QuantizeInfo",
    "VectorQuantizer",
    "check_code_indices",
    "codebook_usage",
    "check_unknown_index",
    "kmeans",
    "nearest_code",
    "perplexity",
    "load_remap",
    "remap_to_used",
    "unmap_to_all",
]

RemapSpec = str | Path | Sequence[int] | np.ndarray | Tensor


class QuantizeInfo(NamedTuple):
    """What a quantiser reports beside ``z_q`` and the loss.

    ``counts`` replaces taming's one-hot ``min_encodings`` (N, n_e) by its column sums (n_e,):
    how many vectors of the batch picked each code.
    """

    perplexity: Tensor  # () exp(entropy) of the batch's code histogram, in [1, n_e]
    counts: Tensor  # (n_e,) vectors assigned to each code in this batch
    indices: Tensor  # (B*H*W,) or (B, H, W); remapped indices when remap is set

    @property
    def usage(self) -> Tensor:
        """Fraction of the codebook used by this batch, ()."""
        return codebook_usage(self.counts)


def codebook_usage(counts: Tensor) -> Tensor:
    """Fraction of codes with a non-zero count, (); ``counts`` (n_e,) of one batch
    (``QuantizeInfo.counts``) or accumulated over many."""
    return (counts > 0).float().mean()


def nearest_code(z_flat: Tensor, codebook: Tensor) -> Tensor:
    """Index of the nearest code for each row: argmin_j ||z - e_j||^2, (N, D), (K, D) -> (N,).

    Expanded as ||z||^2 + ||e||^2 - 2 z.e like taming, which decides near-ties the same way.
    """
    d = (
        z_flat.pow(2).sum(1, keepdim=True)
        + codebook.pow(2).sum(1)
        - 2 * torch.einsum("nd,kd->nk", z_flat, codebook)
    )  # (N, K)
    return d.argmin(1)


def perplexity(counts: Tensor) -> Tensor:
    """exp(-sum p log p) of the code histogram ``counts`` (K,) with taming's 1e-10 guard."""
    p = counts.float() / counts.sum().clamp(min=1)
    return torch.exp(-(p * torch.log(p + 1e-10)).sum())


@torch.no_grad()
def kmeans(x: Tensor, k: int, iters: int = 10, spherical: bool = False) -> tuple[Tensor, Tensor]:
    """Lloyd's k-means on rows of ``x`` (N, D) -> (centroids (k, D), counts (k,)).

    Centroids start at k random rows (with replacement when N < k); an empty cluster keeps its
    previous centroid. ``spherical`` re-normalises centroids to unit length after each step.
    """
    n = x.shape[0]
    start = torch.randperm(n, device=x.device)[:k] if n >= k else torch.randint(n, (k,))
    c = x[start.to(x.device)].clone()
    counts = torch.zeros(k, dtype=torch.long, device=x.device)
    for _ in range(iters):
        assign = nearest_code(x, c)
        counts = torch.bincount(assign, minlength=k)
        sums = torch.zeros_like(c).index_add_(0, assign, x)
        mean = sums / counts.clamp(min=1).unsqueeze(1).to(x.dtype)
        c = torch.where((counts > 0).unsqueeze(1), mean, c)
        if spherical:
            c = F.normalize(c, dim=1)
    return c, counts


# --- remapping to a subset of used codes (taming's ``remap`` / ``unknown_index``) ---


def load_remap(remap: RemapSpec) -> Tensor:
    """The used code indices (M,) from a ``.npy`` path or an index sequence."""
    used = np.load(remap) if isinstance(remap, str | Path) else remap
    used = torch.as_tensor(np.asarray(used) if not isinstance(used, Tensor) else used)
    if used.ndim != 1 or used.is_floating_point() or used.numel() == 0:
        raise ValueError(f"remap must be a non-empty 1-d integer array, got {tuple(used.shape)}")
    return used.long()


def remap_to_used(indices: Tensor, used: Tensor, unknown_index: int | str) -> Tensor:
    """Full-codebook indices -> positions in ``used``; codes not in ``used`` get ``unknown_index``.

    ``unknown_index="random"`` draws a random position in [0, len(used)) from the global RNG.
    """
    match = indices.unsqueeze(-1) == used.to(indices.device)  # (..., M)
    new = match.long().argmax(-1)
    unknown = ~match.any(-1)
    if unknown_index == "random":
        new[unknown] = torch.randint(0, used.numel(), (int(unknown.sum()),), device=new.device)
    else:
        new[unknown] = int(unknown_index)
    return new


def unmap_to_all(indices: Tensor, used: Tensor) -> Tensor:
    """Positions in ``used`` -> full-codebook indices; the "extra" index maps to ``used[0]``.

    (taming sets the extra index to position 0 before gathering, which gives ``used[0]``.)
    """
    indices = torch.where(indices >= used.numel(), torch.zeros_like(indices), indices)
    return used.to(indices.device)[indices]


def check_unknown_index(unknown_index: int | str, n_used: int) -> int | str:
    """Resolve taming's ``unknown_index``: "random", "extra" (-> n_used) or an int < n_used."""
    if unknown_index == "random":
        return "random"
    if unknown_index == "extra":
        return n_used
    if isinstance(unknown_index, int) and 0 <= unknown_index < n_used:
        return unknown_index
    raise ValueError(
        f"unknown_index must be 'random', 'extra' or an int in [0, {n_used}), got {unknown_index!r}"
    )


class VectorQuantizer(nn.Module):
    """Nearest-neighbour vector quantiser with a codebook ``embedding.weight`` (n_e, e_dim).

    Args:
        n_e: number of codes. e_dim: code dimension (the channels of z).
        beta: commitment weight. legacy: put beta on the codebook term (taming's released
            behaviour) instead of the commitment term.
        remap / unknown_index: restrict indices to the used codes in a .npy (or sequence);
            codes outside it become ``unknown_index`` ("random", "extra" = a new last index,
            or an int). sane_index_shape: return indices as (B, H, W) instead of (B*H*W,).
        ema_decay: if set, the codebook is an exponential moving average of its assigned
            vectors (gamma in the VQ-VAE paper) and not trained by gradient; the loss is then
            the commitment term alone. ema_eps: Laplace smoothing of the cluster sizes.
        kmeans_init: set the codebook by k-means on the first training batch (kmeans_iters
            Lloyd steps).
        dead_code_steps: if > 0, a code unused for this many consecutive training steps is
            re-seeded from a random encoder output of the current batch.
        l2_normalize: compare and quantise l2-normalised z and codes (cosine similarity).
    """

    def __init__(
        self,
        n_e: int,
        e_dim: int,
        beta: float = 0.25,
        *,
        legacy: bool = False,
        remap: RemapSpec | None = None,
        unknown_index: int | str = "random",
        sane_index_shape: bool = False,
        ema_decay: float | None = None,
        ema_eps: float = 1e-5,
        kmeans_init: bool = False,
        kmeans_iters: int = 10,
        dead_code_steps: int = 0,
        l2_normalize: bool = False,
    ) -> None:
        super().__init__()
        if n_e < 1 or e_dim < 1:
            raise ValueError(f"n_e and e_dim must be positive, got n_e={n_e}, e_dim={e_dim}")
        if ema_decay is not None and not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay}")
        if dead_code_steps < 0 or kmeans_iters < 1:
            raise ValueError("dead_code_steps must be >= 0 and kmeans_iters >= 1")
        self.n_e, self.e_dim, self.beta, self.legacy = n_e, e_dim, beta, legacy
        self.sane_index_shape = sane_index_shape
        self.ema_decay, self.ema_eps = ema_decay, ema_eps
        self.kmeans_init, self.kmeans_iters = kmeans_init, kmeans_iters
        self.dead_code_steps, self.l2_normalize = dead_code_steps, l2_normalize

        self.embedding = nn.Embedding(n_e, e_dim)
        self.embedding.weight.data.uniform_(-1.0 / n_e, 1.0 / n_e)  # taming's init
        self.remap = remap
        self.re_embed = n_e
        if remap is not None:
            used = load_remap(remap)
            if int(used.min()) < 0 or int(used.max()) >= n_e:
                raise ValueError(f"remap indices must lie in [0, {n_e}), got {used.tolist()}")
            self.register_buffer("used", used)
            self.unknown_index = check_unknown_index(unknown_index, used.numel())
            self.re_embed = used.numel() + (unknown_index == "extra")
        if ema_decay is not None:
            self.embedding.weight.requires_grad_(False)
            # Each code starts as one observation of its initial vector, so a code that is
            # never assigned keeps its vector instead of being divided by a ~0 cluster size.
            self.embedding.register_buffer("cluster_size", torch.ones(n_e))
            self.embedding.register_buffer("embed_avg", self.embedding.weight.detach().clone())
        if kmeans_init:
            self.register_buffer("initted", torch.tensor(False))
        if dead_code_steps > 0:
            self.register_buffer("unused_steps", torch.zeros(n_e, dtype=torch.long))

    def codebook(self) -> Tensor:
        """The codes quantised to, (n_e, e_dim); unit length with ``l2_normalize``."""
        w = self.embedding.weight
        return F.normalize(w, dim=1) if self.l2_normalize else w

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, QuantizeInfo]:
        if z.ndim != 4 or z.shape[1] != self.e_dim:
            raise ValueError(f"expected z of shape (B, {self.e_dim}, H, W), got {tuple(z.shape)}")
        b, _, h, w = z.shape
        z = rearrange(z, "b c h w -> b h w c")
        if self.l2_normalize:
            z = F.normalize(z, dim=-1)
        z_flat = z.reshape(-1, self.e_dim)  # (N, C), N = B*H*W
        if self.training and self.kmeans_init and not bool(self.initted):
            self._init_from_kmeans(z_flat.detach().float())

        codebook = self.codebook()
        # distances in float32 even under autocast, so near-ties are decided the same way
        indices = nearest_code(z_flat.detach().float(), codebook.detach().float())  # (N,)
        z_q = F.embedding(indices, codebook).view(z.shape)  # (B, H, W, C)
        counts = torch.bincount(indices, minlength=self.n_e)

        zf = z.float()  # the loss in float32 also under autocast
        commitment = torch.mean((zf - z_q.detach().float()) ** 2)  # pulls the encoder to its code
        codebook_term = torch.mean((zf.detach() - z_q.float()) ** 2)  # pulls the code to z
        if self.ema_decay is not None:
            loss = self.beta * commitment
        elif self.legacy:
            loss = commitment + self.beta * codebook_term
        else:
            loss = self.beta * commitment + codebook_term

        if self.training and self.ema_decay is not None:
            self._ema_update(z_flat.detach().to(self.embedding.embed_avg.dtype), indices)
        if self.training and self.dead_code_steps > 0:
            self._restart_dead_codes(z_flat.detach(), counts)

        z_q = z + (z_q.to(z.dtype) - z).detach()  # straight-through estimator, z's dtype
        z_q = rearrange(z_q, "b h w c -> b c h w").contiguous()

        if self.remap is not None:
            indices = remap_to_used(indices.view(b, -1), self.used, self.unknown_index).view(-1)
        if self.sane_index_shape:
            indices = indices.view(b, h, w)
        return z_q, loss, QuantizeInfo(perplexity(counts), counts, indices)

    def get_codebook_entry(self, indices: Tensor, shape: Sequence[int] | None = None) -> Tensor:
        """Codes for ``indices``: (B, C, H, W) given ``shape=(B, H, W, C)`` or (B, H, W) indices."""
        codebook = self.codebook()
        indices, shape = check_code_indices(indices, shape, self.re_embed, self.e_dim)
        if self.remap is not None:
            indices = unmap_to_all(indices, self.used)
        z_q = F.embedding(indices.reshape(-1), codebook)  # (N, C)
        if shape is None:
            return z_q.view(*indices.shape, self.e_dim)
        return rearrange(z_q.view(shape), "b h w c -> b c h w").contiguous()

    # --- codebook maintenance (training mode only) ---

    @torch.no_grad()
    def _init_from_kmeans(self, z_flat: Tensor) -> None:
        centroids, counts = kmeans(z_flat, self.n_e, self.kmeans_iters, self.l2_normalize)
        self.embedding.weight.copy_(centroids)
        if self.ema_decay is not None:
            size = counts.to(centroids.dtype).clamp(min=1)
            self.embedding.cluster_size.copy_(size)
            self.embedding.embed_avg.copy_(centroids * size.unsqueeze(1))
        self.initted.fill_(True)

    @torch.no_grad()
    def _ema_update(self, z_flat: Tensor, indices: Tensor) -> None:
        """N_i <- g N_i + (1-g) n_i ; m_i <- g m_i + (1-g) sum z ; e_i = m_i / N~_i.

        N~_i = (N_i + eps) / (n + K eps) * n with n = sum N_i (Laplace smoothing).
        """
        emb, decay = self.embedding, self.ema_decay
        n_i = torch.bincount(indices, minlength=self.n_e).to(z_flat.dtype)
        sums = torch.zeros_like(emb.embed_avg).index_add_(0, indices, z_flat)  # (K, C)
        emb.cluster_size.mul_(decay).add_(n_i, alpha=1 - decay)
        emb.embed_avg.mul_(decay).add_(sums, alpha=1 - decay)
        n = emb.cluster_size.sum()
        smoothed = (emb.cluster_size + self.ema_eps) / (n + self.n_e * self.ema_eps) * n
        emb.weight.copy_(emb.embed_avg / smoothed.unsqueeze(1))

    @torch.no_grad()
    def _restart_dead_codes(self, z_flat: Tensor, counts: Tensor) -> None:
        self.unused_steps.add_(1).masked_fill_(counts > 0, 0)
        dead = (self.unused_steps >= self.dead_code_steps).nonzero().squeeze(1)
        if dead.numel() == 0:
            return
        pick = torch.randint(0, z_flat.shape[0], (dead.numel(),), device=z_flat.device)
        new = z_flat[pick].to(self.embedding.weight.dtype)
        # written through .data: this step's graph may hold the weight (l2-normalised codebook)
        # and its version counter must not change; a dead code had no use this step, so its
        # rows of every gradient are zero and the write cannot corrupt them
        self.embedding.weight.data[dead] = new
        if self.ema_decay is not None:
            self.embedding.cluster_size[dead] = 1.0
            self.embedding.embed_avg[dead] = new
        self.unused_steps[dead] = 0


def check_code_indices(
    indices: Tensor, shape: Sequence[int] | None, n_codes: int, e_dim: int
) -> tuple[Tensor, tuple[int, int, int, int] | None]:
    """Validate code indices against a codebook of ``n_codes`` and an optional (B, H, W, C).

    (B, H, W) indices without a shape imply ``shape=(B, H, W, e_dim)``.
    """
    if indices.is_floating_point() or indices.is_complex() or indices.dtype == torch.bool:
        raise ValueError(f"code indices must be an integer tensor, got {indices.dtype}")
    indices = indices.long()
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= n_codes):
        raise ValueError(
            f"code indices must lie in [0, {n_codes}), got range "
            f"[{int(indices.min())}, {int(indices.max())}]"
        )
    if shape is None:
        if indices.ndim == 3:
            return indices, (*indices.shape, e_dim)
        return indices, None
    shape = tuple(int(s) for s in shape)
    if len(shape) != 4 or shape[3] != e_dim:
        raise ValueError(f"shape must be (B, H, W, {e_dim}), got {shape}")
    b, h, w, _ = shape
    if tuple(indices.shape) not in ((b * h * w,), (b, h * w), (b, h, w)):
        raise ValueError(
            f"indices of shape {tuple(indices.shape)} do not fit shape {shape}: expected "
            f"({b * h * w},), ({b}, {h * w}) or ({b}, {h}, {w})"
        )
    return indices, shape
