"""Textual-inversion embeddings (Gal et al. 2022): learned token vectors used by name in prompts.

Files, as A1111 (``modules/textual_inversion/textual_inversion.py``) and diffusers
(``load_textual_inversion``) read them:

* A1111 ``.pt`` / ``.bin``: ``{"string_to_param": {"*": (n, D)}, "name": ..., ...}``;
* A1111 ``.safetensors``: ``emb_params`` (n, D); SDXL: ``clip_l`` (n, 768) and ``clip_g``
  (n, 1280) for the two text encoders;
* diffusers ``learned_embeds``: one ``{"<token>": (D,) or (n, D)}`` entry.

An embedding is named by its file name (without suffix), as in A1111. Loading one appends its
n vectors to each text encoder's token-embedding table (a new tensor; the original is kept and
put back by ``unload``) and gives its name n ids past the vocabulary in that embedder's
tokenizer (``CLIPTokenizer.set_added_words``). The name then tokenizes to those n ids, so its
vectors count as n tokens in the 75-token chunks, in ``BREAK`` and in the emphasis weights, and
the encoders see the vectors in their places, as diffusers' added tokens do. An embedding that
would straddle a chunk boundary starts the next chunk whole, as in A1111.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn

from genmodels.adapters.hashes import embedding_hash
from genmodels.checkpoints.io import check_regular_file
from genmodels.models.family import ModelFamily

__all__ = [
    "EMBEDDING_SUFFIXES",
    "EmbeddingError",
    "EmbeddingStore",
    "LoadedEmbedding",
    "read_embedding",
]

EMBEDDING_SUFFIXES = (".pt", ".bin", ".safetensors")
# per family: which stored vector set each embedder takes ("*": the single set)
_SLOTS: dict[str, tuple[str, ...]] = {
    "sd1": ("*",), "sd2": ("*",), "sdxl-base": ("clip_l", "clip_g"), "sdxl-refiner": ("clip_g",),
}  # fmt: skip
_WIDTH_FAMILIES = {768: "SD 1.x", 1024: "SD 2.x"}


class EmbeddingError(ValueError):
    """An embedding file that cannot be read or does not fit the model."""


def _load_pickle(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise EmbeddingError(
            f"{path}: the embedding needs Python objects beyond tensors and plain containers, "
            f"which genmodels never unpickles ({str(exc).splitlines()[0]})"
        ) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile) as exc:
        raise EmbeddingError(f"{path}: not a readable embedding (corrupt file?): {exc}") from None


def read_embedding(path: str | os.PathLike) -> dict[str, Tensor]:
    """The vector sets of an embedding file: ``{"*": (n, D)}`` or SDXL's ``clip_l`` / ``clip_g``."""
    path = Path(path)
    try:
        check_regular_file(path, "embedding file")
    except ValueError as exc:
        raise EmbeddingError(str(exc)) from None
    if path.suffix.lower() == ".safetensors":
        try:
            data: object = load_file(str(path))
        except (SafetensorError, OSError, RuntimeError) as exc:
            raise EmbeddingError(f"{path}: not a readable safetensors file: {exc}") from None
    else:
        data = _load_pickle(path)
    sets = _vector_sets(data, path)
    for key, t in sets.items():
        if t.ndim != 2 or not t.is_floating_point() or not t.shape[0] or not t.isfinite().all():
            raise EmbeddingError(
                f"{path}: {key} must be finite (n_vectors, width) floats, got "
                f"{tuple(t.shape)} {t.dtype}"
            )
    return sets


def _vector_sets(data: object, path: Path) -> dict[str, Tensor]:
    if not isinstance(data, dict):
        raise EmbeddingError(f"{path}: expected a dict, got {type(data).__name__}")
    if "clip_l" in data or "clip_g" in data:
        pair = ("clip_l", "clip_g")
        return {k: data[k].detach() for k in pair if isinstance(data.get(k), Tensor)}
    if "emb_params" in data and isinstance(data["emb_params"], Tensor):
        return {"*": data["emb_params"].detach()}
    params = data.get("string_to_param")
    if isinstance(params, dict) and len(params) == 1:
        (vectors,) = params.values()
        if isinstance(vectors, Tensor):
            return {"*": vectors.detach()}
    tensors = [v for v in data.values() if isinstance(v, Tensor)]
    if len(data) == 1 and len(tensors) == 1:  # diffusers learned_embeds: {"<token>": vector}
        return {"*": tensors[0].detach().reshape(-1, tensors[0].shape[-1])}
    raise EmbeddingError(
        f"{path}: not a textual-inversion embedding (no string_to_param / emb_params / clip_l "
        f"and clip_g; keys: {sorted(map(str, data))[:8]})"
    )


def _family_of(sets: dict[str, Tensor]) -> str:
    if "*" not in sets:
        return "SDXL"
    return _WIDTH_FAMILIES.get(sets["*"].shape[1], f"{sets['*'].shape[1]}-wide")


@dataclass
class LoadedEmbedding:
    name: str
    path: Path
    vectors: int  # tokens it takes in a prompt

    @cached_property
    def short_hash(self) -> str:
        return embedding_hash(self.path)


class EmbeddingStore:
    """The embeddings added to one text encoder, and its original token-embedding tables."""

    def __init__(self) -> None:
        self.loaded: dict[str, LoadedEmbedding] = {}
        self._originals: list[tuple[nn.Embedding, Tensor]] = []

    def load(self, paths: Sequence[str | os.PathLike], text_encoder: nn.Module,
             family: ModelFamily) -> list[LoadedEmbedding]:  # fmt: skip
        """Add the embeddings of ``paths`` (named by file name) to every embedder at once."""
        embedders = list(text_encoder.embedders)  # type: ignore[attr-defined]
        slots = _SLOTS[family]
        read = [(Path(p), read_embedding(p)) for p in paths]
        new_rows: list[list[Tensor]] = [[] for _ in embedders]
        words: list[dict[str, list[int]]] = [dict(e.tokenizer.added_words) for e in embedders]
        sizes = [e.model.text_model.embeddings.token_embedding.weight.shape[0] for e in embedders]
        added = []
        for path, sets in read:
            counts = set()
            for i, (emb, slot) in enumerate(zip(embedders, slots)):
                vectors = _pick(sets, slot, emb.model.config.hidden_size, path, family)
                words[i][path.stem] = list(range(sizes[i], sizes[i] + len(vectors)))
                # one unused row after each embedding: a run of consecutive ids is then one
                # embedding, which the chunking keeps whole (tokenizer.split_chunks)
                sizes[i] += len(vectors) + 1
                new_rows[i] += [vectors, vectors.new_zeros(1, vectors.shape[1])]
                counts.add(len(vectors))
            added.append(LoadedEmbedding(path.stem, path, max(counts)))
        for emb, rows, table in zip(embedders, new_rows, words):
            layer = emb.model.text_model.embeddings.token_embedding
            current = layer.weight.data
            if rows:
                if not any(layer is m for m, _ in self._originals):
                    self._originals.append((layer, current))
                extra = torch.cat(rows).to(device=current.device, dtype=current.dtype)
                layer.weight.data = torch.cat([current, extra])
            emb.tokenizer.set_added_words(table)
        self.loaded.update({e.name: e for e in added})
        return added

    def unload(self, text_encoder: nn.Module) -> None:
        """Remove every embedding: the original tables and tokenizers come back."""
        for layer, original in self._originals:
            current = layer.weight.data  # the pipeline may have moved since: follow it
            layer.weight.data = original.to(device=current.device, dtype=current.dtype)
        for emb in text_encoder.embedders:  # type: ignore[attr-defined]
            emb.tokenizer.set_added_words({})
        self._originals.clear()
        self.loaded.clear()

    def used(self, text_encoder: nn.Module, *prompts: str) -> list[LoadedEmbedding]:
        """The loaded embeddings that ``prompts`` name, in order of first use."""
        tokenizer = text_encoder.embedders[0].tokenizer  # type: ignore[attr-defined, index]
        by_word = {k.lower(): v for k, v in self.loaded.items()}
        names = [w for p in prompts for w in tokenizer.find_added_words(p)]
        return [by_word[w] for w in dict.fromkeys(names) if w in by_word]


def _pick(sets: dict[str, Tensor], slot: str, width: int, path: Path, family: str) -> Tensor:
    """The vectors of ``sets`` for one embedder (slot "*", "clip_l" or "clip_g")."""
    vectors = sets.get(slot)
    if vectors is None or vectors.shape[1] != width:
        theirs = _family_of(sets)
        shapes = {k: tuple(v.shape) for k, v in sets.items()}
        raise EmbeddingError(
            f"{path}: an {theirs} embedding {shapes} does not fit this {family} model (its "
            f"text encoder needs {width}-wide {slot if slot != '*' else ''} vectors)"
        )
    return vectors
