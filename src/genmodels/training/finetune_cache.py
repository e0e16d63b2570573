"""On-disk caches of a fine-tuning run: VAE latents and caption embeddings, keyed by content.

Each entry is one small safetensors file ``<dir>/<kind>/<key>.safetensors`` written atomically;
``key`` is the SHA-256 of what determines it, so a changed input is a new key (re-encoded) and
an unchanged one is read back (a second run or a resume encodes nothing):

* latents: the image file's bytes, the bucket, the crop mode, the orientation and the VAE's
  weights (``module_digest``); the posterior mode is stored (deterministic, as kohya's cache)
  with the crop it was taken from (SDXL's micro-conditioning).
* captions: the caption text and the text encoders' weights; context and pooled output.

Random crops are never cached (the crop changes every step; kohya refuses ``cache_latents`` with
``random_crop`` for the same reason): the trainer encodes those per step. With random flips both
orientations are cached, so a flip costs one extra encode per image once. A damaged entry is
treated as absent and rewritten.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from genmodels.checkpoints.atomic import write_atomic
from genmodels.data.buckets import CropInfo

TextEncodeFn = Callable[[list[str]], tuple[Tensor, Tensor | None]]

__all__ = ["LatentStore", "TensorCache", "TextStore", "file_digest", "module_digest"]


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def module_digest(module: nn.Module) -> str:
    """SHA-256 of a module's weights (names, dtypes, shapes and bytes): the encoder identity."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _key(*parts: object) -> str:
    return hashlib.sha256("|".join(str(p) for p in parts).encode()).hexdigest()


class TensorCache:
    """Tensors by key in one folder (``root`` None: nothing is stored)."""

    def __init__(self, root: str | Path | None) -> None:
        self.root = Path(root) if root is not None else None
        if self.root is not None:
            self.root.mkdir(parents=True, exist_ok=True)

    def get(self, key: str) -> dict[str, Tensor] | None:
        if self.root is None or not (self.root / f"{key}.safetensors").is_file():
            return None
        try:
            return load_file(str(self.root / f"{key}.safetensors"))
        except (SafetensorError, OSError, ValueError):  # damaged: encode again
            return None

    def put(self, key: str, tensors: dict[str, Tensor]) -> None:
        if self.root is None:
            return
        data = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        write_atomic(self.root / f"{key}.safetensors", lambda tmp: save_file(data, str(tmp)))


class LatentStore:
    """Latents of (image, bucket, crop mode, orientation), in memory and on disk."""

    def __init__(self, cache: TensorCache, encode: Callable[[Tensor], Tensor], vae_id: str,
                 crop: str) -> None:  # fmt: skip
        self.cache, self.encode_fn, self.vae_id, self.crop = cache, encode, vae_id, crop
        self.memory: dict[str, tuple[Tensor, CropInfo]] = {}
        self.encoded = 0  # images encoded by the VAE (not read from the cache)

    def key(self, digest: str, bucket: tuple[int, int], flipped: bool) -> str:
        return _key("latent", digest, f"{bucket[0]}x{bucket[1]}", self.crop, flipped, self.vae_id)

    def get(self, key: str) -> tuple[Tensor, CropInfo] | None:
        if key in self.memory:
            return self.memory[key]
        stored = self.cache.get(key)
        if stored is None:
            return None
        c = [int(v) for v in stored["crop"]]
        found = stored["latent"], CropInfo((c[0], c[1]), (c[2], c[3]), (c[4], c[5]), bool(c[6]))
        self.memory[key] = found
        return found

    def put(self, key: str, image: Tensor, info: CropInfo) -> tuple[Tensor, CropInfo]:
        """Encode ``image`` (3, H, W) and store its latent under ``key``."""
        return self.put_many([(key, image, info)])[0]

    def put_many(self, items: list[tuple[str, Tensor, CropInfo]]) -> list[tuple[Tensor, CropInfo]]:
        """Encode images of one size in one batch and store each latent under its key."""
        latents = self.encode_fn(torch.stack([image for _, image, _ in items])).float().cpu()
        self.encoded += len(items)
        out = []
        for (key, _, info), latent in zip(items, latents):
            crop = torch.tensor([*info.original_size, *info.crop_top_left, *info.target_size,
                                 int(info.flipped)])  # fmt: skip
            self.cache.put(key, {"latent": latent.clone(), "crop": crop})
            self.memory[key] = latent, info
            out.append((latent, info))
        return out


class TextStore:
    """Caption -> (context (T, D), pooled (P,) or None), in memory and on disk."""

    def __init__(self, cache: TensorCache, encode: TextEncodeFn, encoder_id: str) -> None:
        self.cache, self.encode_fn, self.encoder_id = cache, encode, encoder_id
        self.memory: dict[str, tuple[Tensor, Tensor | None]] = {}
        self.encoded = 0  # captions run through the text encoders

    def _one(self, caption: str) -> tuple[Tensor, Tensor | None]:
        if caption in self.memory:
            return self.memory[caption]
        key = _key("text", caption, self.encoder_id)
        stored = self.cache.get(key)
        if stored is None:
            context, pooled = self.encode_fn([caption])
            self.encoded += 1
            stored = {"context": context[0].float().cpu()}
            if pooled is not None:
                stored["pooled"] = pooled[0].float().cpu()
            self.cache.put(key, stored)
        found = stored["context"], stored.get("pooled")
        self.memory[caption] = found
        return found

    def batch(self, captions: Sequence[str]) -> tuple[Tensor, Tensor | None]:
        """Contexts (B, T, D) and pooled (B, P) or None. Captions over 75 tokens have more
        77-token chunks; shorter ones are padded with the empty chunk's encoding, exactly what
        the text encoder does for a batch (each chunk is encoded on its own)."""
        found = [self._one(c) for c in captions]
        contexts = [c for c, _ in found]
        longest = max(c.shape[0] for c in contexts)
        if any(c.shape[0] != longest for c in contexts):
            empty = self._one("")[0]  # (77, D): one empty chunk
            contexts = [torch.cat([c, empty.repeat((longest - c.shape[0]) // empty.shape[0], 1)])
                        for c in contexts]  # fmt: skip
        pooled = None if found[0][1] is None else torch.stack([p for _, p in found])
        return torch.stack(contexts), pooled
