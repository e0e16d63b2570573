"""Built-in offline dataset: Noto Color Emoji glyphs rendered at 32 or 64 px on white.

Glyphs come from Debian's ``fonts-noto-color-emoji`` (a CBDT bitmap font: FreeType renders it
only at its native 109 px strike, so each glyph is drawn at 109 px, cropped to its bounding
box, centred on a white square and downsampled with Lanczos). Captions are the CLDR short
names from the PyPI package ``emoji`` (``:grinning_face:`` -> "grinning face"); only
fully-qualified emoji are used. Labels are the Unicode emoji groups ("Smileys & Emotion",
"People & Body", ..., "Flags"; ``class_names``), in the order of Unicode's ``emoji-test.txt``,
which also orders the dataset. The group table ``emoji_groups.json.gz`` beside this file was made
by ``write_group_table`` from ``emoji-test.txt`` of Unicode 15.0 (the version of Debian 12's
``fonts-noto-color-emoji`` and ``unicode-data``); emoji outside it (newer than the table) and
glyphs the font lacks are left out. The rendered set is cached under ``~/.cache/genmodels``.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from genmodels.checkpoints.atomic import write_atomic

from .tensor_dataset import ImageTensorDataset

__all__ = [
    "FONT_PATHS",
    "GROUP_TABLE",
    "emoji_groups",
    "find_emoji_font",
    "load_emoji_dataset",
    "parse_emoji_test",
    "render_emoji",
    "write_group_table",
]

FONT_PATHS = (
    "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf",
    "/usr/share/fonts/noto/NotoColorEmoji.ttf",
    "/usr/local/share/fonts/NotoColorEmoji.ttf",
)
_STRIKE = 109  # the only bitmap size in NotoColorEmoji.ttf
GROUP_TABLE = Path(__file__).with_name("emoji_groups.json.gz")
_NOTICE = (
    "Emoji groups derived from emoji-test.txt. Copyright (c) 1991-2022 Unicode, Inc. "
    "Distributed under the Unicode License (https://www.unicode.org/license.txt)."
)


def find_emoji_font(paths: tuple[str, ...] = FONT_PATHS) -> str:
    """Path of NotoColorEmoji.ttf, or a ValueError telling how to install it."""
    for path in paths:
        if os.path.isfile(path):
            return path
    raise ValueError(
        "the 'emoji' dataset needs the Noto Color Emoji font (NotoColorEmoji.ttf, looked in "
        f"{', '.join(paths)}); install it with: apt-get install fonts-noto-color-emoji"
    )


def render_emoji(char: str, font: ImageFont.FreeTypeFont, size: int) -> Image.Image | None:
    """One emoji as an RGB ``size`` x ``size`` image on white, or None if the font lacks it."""
    canvas = Image.new("RGBA", (2 * _STRIKE, 2 * _STRIKE), (255, 255, 255, 0))
    ImageDraw.Draw(canvas).text((_STRIKE // 2, _STRIKE // 2), char, font=font, embedded_color=True)
    bbox = canvas.getchannel("A").getbbox()
    if bbox is None:
        return None
    glyph = canvas.crop(bbox)
    side = max(glyph.size)
    square = Image.new("RGBA", (side, side), (255, 255, 255, 255))
    square.alpha_composite(glyph, ((side - glyph.width) // 2, (side - glyph.height) // 2))
    return square.convert("RGB").resize((size, size), Image.LANCZOS)


def parse_emoji_test(text: str) -> list[tuple[str, list[str]]]:
    """(group name, its fully-qualified emoji in file order) from ``emoji-test.txt``."""
    groups: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if line.startswith("# group:"):
            groups.append((line.split(":", 1)[1].strip(), []))
        elif "; fully-qualified" in line and groups:
            codes = line.split(";", 1)[0].split()
            groups[-1][1].append("".join(chr(int(c, 16)) for c in codes))
    return [(name, chars) for name, chars in groups if chars]


def write_group_table(emoji_test: str | Path, out: str | Path = GROUP_TABLE) -> Path:
    """Write the group table (gzipped JSON) from an ``emoji-test.txt``."""
    version = next(
        (ln.split(":", 1)[1].strip() for ln in Path(emoji_test).read_text().splitlines()
         if ln.startswith("# Version:")), "unknown",
    )  # fmt: skip
    groups = parse_emoji_test(Path(emoji_test).read_text())
    table = {"unicode_version": version, "notice": _NOTICE, "groups": dict(groups)}
    with gzip.open(out, "wt", encoding="utf-8") as f:
        json.dump(table, f, ensure_ascii=False, separators=(",", ":"))
    return Path(out)


def emoji_groups() -> list[tuple[str, list[str]]]:
    """The bundled Unicode emoji groups: (name, fully-qualified emoji) in Unicode order."""
    with gzip.open(GROUP_TABLE, "rt", encoding="utf-8") as f:
        return list(json.load(f)["groups"].items())


def _emoji_names() -> list[tuple[str, str, int]]:
    """(emoji, caption, group index) of the fully-qualified emoji, in Unicode order."""
    try:
        import emoji
    except ImportError as exc:
        raise ValueError(
            "the 'emoji' dataset takes its captions from the 'emoji' package, which is not "
            "installed: pip install emoji"
        ) from exc
    qualified = emoji.STATUS["fully_qualified"]
    out = []
    for group, (_, chars) in enumerate(emoji_groups()):
        for char in chars:
            data = emoji.EMOJI_DATA.get(char)
            if data is not None and data.get("status") == qualified:
                out.append((char, data["en"].strip(":").replace("_", " "), group))
    return out


def load_emoji_dataset(
    size: int = 32, limit: int | None = None, cache_dir: str | Path | None = None
) -> ImageTensorDataset:
    """Rendered emoji (N, 3, size, size) in [-1, 1]; ``captions`` holds their names, ``labels``
    their Unicode group (``class_names``)."""
    if size not in (32, 64):
        raise ValueError(f"emoji size must be 32 or 64, got {size}")
    font_path = find_emoji_font()
    names = _emoji_names()[:limit]
    cache = Path(cache_dir or Path.home() / ".cache" / "genmodels")
    cache_file = cache / f"emoji-v2-{size}-{len(names)}.npz"
    if cache_file.is_file():
        data = np.load(cache_file, allow_pickle=False)
        images, labels = data["images"], data["labels"]
        captions = [str(c) for c in data["captions"]]
    else:
        font = ImageFont.truetype(font_path, _STRIKE)
        kept = [
            (np.asarray(img), name, group)
            for char, name, group in names
            if (img := render_emoji(char, font, size)) is not None
        ]
        images = np.stack([img for img, _, _ in kept])  # (N, size, size, 3) uint8
        captions = [name for _, name, _ in kept]
        labels = np.array([group for _, _, group in kept], dtype=np.int64)
        cache.mkdir(parents=True, exist_ok=True)
        arrays = dict(images=images, captions=np.array(captions), labels=labels)

        def write(tmp: Path) -> None:
            with tmp.open("wb") as f:
                np.savez(f, **arrays)

        write_atomic(cache_file, write)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    groups = [name for name, _ in emoji_groups()]
    return ImageTensorDataset(
        x.contiguous(), torch.from_numpy(labels), class_names=groups, captions=captions
    )
