"""A1111's short hashes of adapter files, as its ``Lora hashes`` / ``TI hashes`` infotext records.

* LoRA (``extensions-builtin/Lora/network.py``: ``hashes.sha256(..., use_addnet_hash=
  is_safetensors)``): for a ``.safetensors`` file the kohya / sd-webui-additional-networks
  "addnet" hash, the sha256 of the bytes after the JSON header (so editing the metadata keeps
  the hash); for other files the sha256 of the whole file. The short hash is its first 12 hex
  digits.
* textual-inversion embeddings (``textual_inversion.Embedding.shorthash``): the first 12 hex
  digits of the whole file's sha256.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

__all__ = ["SHORT_HASH_LENGTH", "embedding_hash", "lora_hash"]

SHORT_HASH_LENGTH = 12
_BLOCK = 1 << 20


def _sha256(path: Path, offset: int = 0) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(offset)
        for block in iter(lambda: f.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def _is_safetensors(path: Path) -> bool:
    return path.suffix.lower() in (".safetensors", ".sft")


def lora_hash(path: str | os.PathLike) -> str:
    """A1111's short LoRA hash (12 hex digits)."""
    path = Path(path)
    offset = 0
    if _is_safetensors(path):
        with open(path, "rb") as f:
            offset = 8 + int.from_bytes(f.read(8), "little")
    return _sha256(path, offset)[:SHORT_HASH_LENGTH]


def embedding_hash(path: str | os.PathLike) -> str:
    """A1111's short textual-inversion hash (12 hex digits of the file's sha256)."""
    return _sha256(Path(path))[:SHORT_HASH_LENGTH]
