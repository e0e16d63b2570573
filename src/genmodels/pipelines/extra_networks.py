"""A1111's extra-network prompt syntax for LoRAs: ``<lora:NAME:WEIGHT>``.

``<lora:NAME>`` / ``<lora:NAME:W>`` / ``<lora:NAME:TE_W:UNET_W>`` (or named ``te=`` / ``unet=``)
as stable-diffusion-webui's ``extra_networks.parse_prompt`` and its Lora extension: the first
number is the text-encoder multiplier, the second the UNet one (default: the first). Tags are
taken out of the prompt before it is encoded and stay in the recorded prompt text, as A1111
records them; the names are looked up as ``NAME.safetensors`` / ``.pt`` / ``.ckpt`` in the LoRA
folders. ``Lora hashes`` in the infotext are A1111's (``adapters.hashes.lora_hash``).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from genmodels.pipelines.latent_diffusion import LatentDiffusionPipeline

__all__ = [
    "LORA_SUFFIXES",
    "LoraTag",
    "apply_prompt_loras",
    "embedding_files",
    "find_lora",
    "lora_hashes",
    "parse_lora_tags",
    "strip_extra_networks",
    "used_embeddings",
]

# A1111's re_extra_net: <type:arguments>
_EXTRA_NET = re.compile(r"<(\w+):([^>]+)>")
LORA_SUFFIXES = (".safetensors", ".pt", ".ckpt")


@dataclass(frozen=True)
class LoraTag:
    name: str
    text_weight: float = 1.0
    unet_weight: float = 1.0


def _number(text: str, tag: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ValueError(f"prompt tag {tag}: {text!r} is not a number")
    return value


def parse_lora_tags(prompt: str) -> list[LoraTag]:
    """The ``<lora:...>`` tags of a prompt, in order (A1111's positional and named arguments)."""
    tags = []
    for m in _EXTRA_NET.finditer(prompt):
        if m.group(1) != "lora":
            continue
        items = m.group(2).split(":")
        positional = [i for i in items if "=" not in i]
        named = dict(i.split("=", 1) for i in items if "=" in i)
        name = positional[0].strip() if positional else ""
        if not name:
            raise ValueError(f"prompt tag {m.group(0)}: no LoRA name")
        te = _number(named.get("te", positional[1] if len(positional) > 1 else "1"), m.group(0))
        unet_text = named.get("unet", positional[2] if len(positional) > 2 else None)
        unet = te if unet_text is None else _number(unet_text, m.group(0))
        tags.append(LoraTag(name, te, unet))
    return tags


def strip_extra_networks(prompt: str) -> str:
    """The prompt without its ``<type:...>`` extra-network tags (what the text encoder sees)."""
    return _EXTRA_NET.sub("", prompt)


def find_lora(name: str, folders: Sequence[str | os.PathLike]) -> Path:
    """``NAME.safetensors`` / ``.pt`` / ``.ckpt`` (or ``NAME`` itself) in the first folder that
    has it; ValueError naming the folders searched."""
    for folder in folders:
        for suffix in ("", *LORA_SUFFIXES):
            path = Path(folder) / f"{name}{suffix}"
            if path.is_file() and (suffix or path.suffix.lower() in LORA_SUFFIXES):
                return path
    where = ", ".join(str(f) for f in folders) or "no LoRA folder given (use --lora-dir)"
    raise ValueError(f"LoRA {name!r} not found: no {name}{{{','.join(LORA_SUFFIXES)}}} in {where}")


def apply_prompt_loras(
    pipe: LatentDiffusionPipeline,
    prompt: str,
    folders: Sequence[str | os.PathLike] = (),
    known: dict[str, Path] | None = None,
) -> None:
    """Load the LoRAs the prompt's tags name (``known``: name -> file, else ``find_lora`` in
    ``folders``) into ``pipe``; LoRAs already loaded from the same file are left as they are."""
    known = known or {}
    loaded = {(lora.name, lora.path.resolve()) for lora in pipe.loras}
    for tag in parse_lora_tags(prompt):
        path = known.get(tag.name) or find_lora(tag.name, folders)
        if (tag.name, path.resolve()) in loaded:
            continue
        lora = pipe.load_lora(path, unet_weight=tag.unet_weight, text_weight=tag.text_weight)
        lora.name = tag.name
        loaded.add((tag.name, path.resolve()))


def lora_hashes(pipe: LatentDiffusionPipeline) -> str | None:
    """A1111's ``Lora hashes`` value, ``"name: hash, ..."`` (``:`` and ``,`` removed from names)."""
    if not pipe.loras:
        return None
    clean = str.maketrans("", "", ":,")
    return ", ".join(f"{lora.name.translate(clean)}: {lora.short_hash}" for lora in pipe.loras)


def unloaded_tags(pipe: LatentDiffusionPipeline, prompt: str) -> list[str]:
    """Names of the prompt's LoRA tags that no loaded LoRA carries."""
    names = {lora.name for lora in pipe.loras}
    return [tag.name for tag in parse_lora_tags(prompt) if tag.name not in names]


def adapter_infotext(
    pipe: LatentDiffusionPipeline, prompt: str, negative_prompt: str = ""
) -> dict[str, str]:
    """The infotext fields of the adapters in use: ``Lora hashes`` and ``TI hashes`` (the
    embeddings the prompts name), as A1111 writes them. A prompt tag naming no loaded LoRA is
    an error: the tag would otherwise be dropped without effect."""
    missing = unloaded_tags(pipe, prompt)
    if missing:
        raise ValueError(
            f"the prompt names LoRAs that are not loaded: {', '.join(missing)} (load them with "
            "pipe.load_lora / apply_prompt_loras, or --lora / --lora-dir on the command line)"
        )
    fields = {}
    hashes = lora_hashes(pipe)
    if hashes:
        fields["Lora hashes"] = hashes
    used = pipe.embedding_store.used(pipe.text_encoder, prompt, negative_prompt)
    if used:
        clean = str.maketrans("", "", ":,")
        fields["TI hashes"] = ", ".join(f"{e.name.translate(clean)}: {e.short_hash}" for e in used)
    return fields


def embedding_files(folders: Sequence[str | os.PathLike], flag: str = "--embeddings-dir") -> dict:
    """``{name: path}`` of every embedding file (``.pt`` / ``.bin`` / ``.safetensors``) in the
    folders, the first folder winning a name; ValueError for a folder that is not one."""
    from genmodels.adapters.embeddings import EMBEDDING_SUFFIXES

    files: dict[str, Path] = {}
    for folder in map(Path, folders):
        if not folder.is_dir():
            raise ValueError(f"{flag} {folder}: not a folder")
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() in EMBEDDING_SUFFIXES and path.is_file():
                files.setdefault(path.stem, path)
    return files


def used_embeddings(files: dict[str, Path], *prompts: str) -> list[Path]:
    """The files of ``files`` whose names the prompts use as words (A1111 matches embedding
    names case-insensitively, as whole words of the cleaned prompt), in order of first use."""
    if not files:
        return []
    from genmodels.models.text.tokenizer import CLIPTokenizer

    finder = CLIPTokenizer()
    finder.set_added_words({name: [0] for name in files})
    by_word = {name.lower(): path for name, path in files.items()}
    used = [w for prompt in prompts for w in finder.find_added_words(prompt)]
    return [by_word[w] for w in dict.fromkeys(used) if w in by_word]
