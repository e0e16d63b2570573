"""Image folders: recursive png / jpg / webp, class sub-folders, captions, corrupt-file skipping.

* Classes: when every image lies inside a top-level sub-folder, the sorted sub-folder names are
  the classes (label = index); otherwise labels are -1.
* Captions: a sidecar ``<stem>.txt`` next to the image, or a ``metadata.jsonl`` in any folder
  with lines ``{"file_name": "a.png", "text": "..."}`` (the Hugging Face imagefolder layout).
* Captions are read as UTF-8; a file that is not UTF-8 is an error naming it.
* Corrupt or unreadable images are skipped with a warning and counted (``skipped``; the files
  in ``bad``): at scan time (``PIL.Image.verify``) and again if decoding fails later, when the
  next image stands in. ``sizes[i]`` is the (width, height) of ``files[i]`` read at the scan.
* kohya-style repeat folders (``10_mychar/``: every image inside counts 10 times per epoch) are
  parsed by ``kohya_repeats``; the fine-tuning data applies them.
"""

from __future__ import annotations

import json
import re
import threading
import warnings
from pathlib import Path

from PIL import Image
from torch import Tensor

from .transforms import load_rgb, transform_image

__all__ = ["IMAGE_EXTENSIONS", "ImageFolderDataset", "kohya_repeats", "read_utf8"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")


_REPEAT_FOLDER = re.compile(r"^(\d+)_(.+)$")


def kohya_repeats(path: Path, root: Path) -> int:
    """kohya sd-scripts' repeat count of an image: the ``N`` of the nearest enclosing folder
    (below ``root``) named ``N_concept``; 1 when there is none."""
    for part in reversed(path.relative_to(root).parts[:-1]):
        match = _REPEAT_FOLDER.match(part)
        if match:
            return max(1, int(match.group(1)))
    return 1


def read_utf8(path: Path) -> str:
    """A text file as UTF-8; anything else is one clear error naming the file."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason}); save the caption as UTF-8"
        ) from None
    except OSError as exc:
        raise ValueError(f"{path}: cannot be read ({exc.strerror or exc})") from None


def _read_metadata(root: Path) -> dict[Path, str]:
    captions: dict[Path, str] = {}
    for meta in sorted(root.rglob("metadata.jsonl")):
        for n, line in enumerate(read_utf8(meta).splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                captions[(meta.parent / row["file_name"]).resolve()] = str(row["text"])
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ValueError(
                    f'{meta}:{n}: expected {{"file_name": ..., "text": ...}}, got {line!r}'
                ) from exc
    return captions


class ImageFolderDataset:
    """Items ``(image (3, size, size) in [-1, 1], label)``; ``captions[i]`` holds the text.

    An item key may be ``(index, seed)`` to fix the random crop / flip (the trainer passes a
    seed per step and sample so resumed runs see the same augmentations).
    """

    def __init__(
        self, root: str | Path, size: int, crop: str = "center", flip: bool = False
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise ValueError(f"image folder {self.root} does not exist or is not a directory")
        self.size, self.crop, self.flip = size, crop, flip
        files = sorted(
            p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
        )
        self.bad: set[Path] = set()  # files that could not be read, each counted once
        self._lock = threading.Lock()  # the trainer decodes in a thread pool
        sizes = {p: self._verify(p) for p in files}
        self.files = [p for p in files if sizes[p] is not None]
        self.sizes: list[tuple[int, int]] = [sizes[p] for p in self.files]
        if not self.files:
            raise ValueError(f"no readable images ({', '.join(IMAGE_EXTENSIONS)}) in {self.root}")
        top = [p.relative_to(self.root).parts for p in self.files]
        if all(len(parts) > 1 for parts in top):
            self.class_names: list[str] | None = sorted({parts[0] for parts in top})
            index = {name: i for i, name in enumerate(self.class_names)}
            self.labels = [index[parts[0]] for parts in top]
        else:
            self.class_names, self.labels = None, [-1] * len(self.files)
        meta = _read_metadata(self.root)
        self.captions = [self._caption(p, meta) for p in self.files]

    def _verify(self, path: Path) -> tuple[int, int] | None:
        """(width, height) of a readable image; None (skipped and counted) otherwise."""
        try:
            with Image.open(path) as img:
                size = img.size
                img.verify()
            return size
        except Exception as exc:  # PIL raises many types for broken files
            self._skip(path, exc)
            return None

    @property
    def skipped(self) -> int:
        """How many distinct files were found unreadable (at the scan or when decoded)."""
        return len(self.bad)

    def _skip(self, path: Path, exc: Exception) -> None:
        with self._lock:
            if path in self.bad:
                return
            self.bad.add(path)
        warnings.warn(f"skipping unreadable image {path}: {exc}", stacklevel=3)

    @staticmethod
    def _caption(path: Path, meta: dict[Path, str]) -> str:
        sidecar = path.with_suffix(".txt")
        if sidecar.is_file():
            return read_utf8(sidecar).strip()
        return meta.get(path.resolve(), "")

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Tensor, int]:
        index, seed = key if isinstance(key, tuple) else (key, key)
        for attempt in range(len(self.files)):
            i = (index + attempt) % len(self.files)
            if self.files[i] in self.bad:  # known bad: not decoded (or counted) again
                continue
            try:
                img = load_rgb(str(self.files[i]))
            except Exception as exc:  # decoding can still fail after verify()
                self._skip(self.files[i], exc)
                continue
            return transform_image(img, self.size, self.crop, self.flip, seed), self.labels[i]
        raise ValueError(f"no image in {self.root} could be decoded")
