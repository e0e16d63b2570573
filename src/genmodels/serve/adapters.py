"""LoRAs and textual-inversion embeddings for the server, as A1111's Lora extension and
embedding folder: ``<lora:NAME:W>`` tags in a request's prompt name files of ``--lora-dir``;
embeddings of ``--embeddings-dir`` are used by file name in the prompt or negative prompt.

A request is checked before it is queued (a tag naming no file is a 400). When its task runs,
the adapters it asks for are applied to the one model; what the previous task applied stays when
it is the same set (applying an SD-size LoRA takes seconds), else it is unloaded first (the
original weights come back bit for bit), so requests never see each other's adapters.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from genmodels.adapters.hashes import lora_hash
from genmodels.pipelines.extra_networks import (
    LORA_SUFFIXES,
    embedding_files,
    find_lora,
    parse_lora_tags,
    used_embeddings,
)
from genmodels.pipelines.latent_diffusion import LatentDiffusionPipeline

__all__ = ["check_adapters", "list_loras", "use_adapters"]


def _wanted_loras(prompt: str, folders: tuple[Path, ...]) -> list[tuple[str, Path, float, float]]:
    return [(t.name, find_lora(t.name, folders).resolve(), t.unet_weight, t.text_weight)
            for t in parse_lora_tags(prompt)]  # fmt: skip


def check_adapters(prompt: str, lora_dirs: tuple[Path, ...]) -> None:
    """ValueError when a ``<lora:...>`` tag is malformed or names no file of ``lora_dirs``."""
    _wanted_loras(prompt, lora_dirs)


def use_adapters(
    pipe: LatentDiffusionPipeline, prompt: str, negative_prompt: str,
    lora_dirs: tuple[Path, ...], embeddings_dirs: tuple[Path, ...],
) -> None:  # fmt: skip
    """Make the model carry exactly the LoRAs and embeddings this request uses."""
    loras = _wanted_loras(prompt, lora_dirs)
    loaded = [(x.name, x.path.resolve(), x.unet_weight, x.text_weight) for x in pipe.loras]
    if loaded != loras:
        pipe.unload_loras()
        for name, path, unet_weight, text_weight in loras:
            pipe.load_lora(path, unet_weight=unet_weight, text_weight=text_weight).name = name
    embeddings = used_embeddings(embedding_files(embeddings_dirs), prompt, negative_prompt)
    current = {e.path.resolve() for e in pipe.embedding_store.loaded.values()}
    if current != {p.resolve() for p in embeddings}:
        pipe.unload_embeddings()
        if embeddings:
            pipe.load_embeddings(embeddings)


def list_loras(lora_dirs: tuple[Path, ...]) -> list[dict[str, Any]]:
    """A1111's ``GET /sdapi/v1/loras`` entries: name, alias, path, metadata."""
    seen, out = set(), []
    for folder in lora_dirs:
        for path in sorted(Path(folder).iterdir()):
            if path.suffix.lower() in LORA_SUFFIXES and path.is_file() and path.stem not in seen:
                seen.add(path.stem)
                out.append({"name": path.stem, "alias": path.stem, "path": str(path),
                            "metadata": {"sshs_model_hash": lora_hash(path)}})  # fmt: skip
    return out
