"""The checkpoints a server can switch between: ``--ckpt`` plus those in ``--ckpt-dir``.

Each is listed as A1111 lists ``/sdapi/v1/sd-models``: ``title`` is the file name with the short
hash in brackets (``model.safetensors [6ce0161689]``) once the hash is known, ``model_name`` the
name without its extension. Hashing a multi-GB file takes seconds, so, as A1111, the sha256 of a
file is computed when it is first loaded and then cached; the others are listed without one.
A checkpoint is looked up by title, title without the hash, file name, model name, short hash or
path, the names A1111 clients send in ``sd_model_checkpoint``.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

from genmodels.checkpoints.diffusers_folder import is_diffusers_folder
from genmodels.checkpoints.io import SAFETENSORS_SUFFIXES
from genmodels.pipelines.metadata import file_sha256

__all__ = ["Catalog", "CheckpointEntry"]

_SUFFIXES = SAFETENSORS_SUFFIXES + (".ckpt",)


@dataclass
class CheckpointEntry:
    path: Path
    name: str  # file name shown, relative to its folder
    sha256: str | None = None

    @property
    def model_name(self) -> str:
        return Path(self.name).stem if self.path.is_file() else self.name

    @property
    def short_hash(self) -> str | None:
        return None if self.sha256 is None else self.sha256[:10]

    @property
    def title(self) -> str:
        return self.name if self.sha256 is None else f"{self.name} [{self.short_hash}]"

    def item(self) -> dict[str, str | None]:
        """The ``SDModelItem`` fields."""
        return dict(title=self.title, model_name=self.model_name, hash=self.short_hash,
                    sha256=self.sha256, filename=str(self.path), config=None)  # fmt: skip

    def names(self) -> set[str]:
        names = {self.title, self.name, self.model_name, str(self.path)}
        return names | ({self.short_hash, self.sha256} if self.sha256 else set())


def _is_checkpoint(path: Path) -> bool:
    return (path.is_file() and path.suffix.lower() in _SUFFIXES) or is_diffusers_folder(path)


class Catalog:
    """The checkpoint files (and diffusers folders) the server knows, hashes cached."""

    def __init__(self, ckpt: str | os.PathLike, ckpt_dir: str | os.PathLike | None = None):
        self.ckpt = Path(ckpt)
        self.ckpt_dir = None if ckpt_dir is None else Path(ckpt_dir)
        self._lock = threading.Lock()
        self._hashes: dict[Path, str] = {}

    def entries(self) -> list[CheckpointEntry]:
        """``--ckpt`` first, then the checkpoint files and diffusers folders directly in
        ``--ckpt-dir``, sorted by name."""
        found = [(self.ckpt.resolve(), self.ckpt.name)]
        if self.ckpt_dir is not None and self.ckpt_dir.is_dir():
            for path in sorted(self.ckpt_dir.iterdir()):
                if _is_checkpoint(path) and path.resolve() != found[0][0]:
                    found.append((path.resolve(), path.name))
        with self._lock:
            return [CheckpointEntry(p, n, self._hashes.get(p)) for p, n in found]

    def hash(self, entry: CheckpointEntry) -> CheckpointEntry:
        """``entry`` with its sha256 (computed once per file; none for a folder)."""
        if entry.sha256 is None and entry.path.is_file():
            digest = file_sha256(entry.path)
            with self._lock:
                self._hashes[entry.path] = digest
            entry = CheckpointEntry(entry.path, entry.name, digest)
        return entry

    def find(self, name: object) -> CheckpointEntry:
        """The entry called ``name`` (ValueError listing the titles when there is none)."""
        entries = self.entries()
        if isinstance(name, str):
            key = name.strip()
            for entry in entries:
                if key in entry.names():
                    return entry
        titles = ", ".join(repr(e.title) for e in entries)
        raise ValueError(f"unknown checkpoint {name!r}; available: {titles}")
