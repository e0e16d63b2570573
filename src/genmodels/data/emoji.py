"""Built-in offline dataset: Noto Color Emoji glyphs rendered at 32 or 64 px on white.

Glyphs come from Debian's ``fonts-noto-color-emoji`` (a CBDT bitmap font: FreeType renders it
only at its native 109 px strike, so each glyph is drawn at 109 px, cropped to its bounding
box, centred on a white square and downsampled with Lanczos). Captions are the CLDR short
names from the PyPI package ``emoji`` (``:grinning_face:`` -> "grinning face"); only
fully-qualified emoji are used. The rendered set is cached under ``~/.cache/genmodels``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .tensor_dataset import ImageTensorDataset

__all__ = ["FONT_PATHS", "find_emoji_font", "load_emoji_dataset", "render_emoji"]

FONT_PATHS = (
    "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf",
    "/usr/share/fonts/noto/NotoColorEmoji.ttf",
    "/usr/local/share/fonts/NotoColorEmoji.ttf",
)
_STRIKE = 109  # the only bitmap size in NotoColorEmoji.ttf


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


def _emoji_names() -> list[tuple[str, str]]:
    try:
        import emoji
    except ImportError as exc:
        raise ImportError(
            "the 'emoji' dataset takes its captions from the 'emoji' package: pip install emoji"
        ) from exc
    qualified = emoji.STATUS["fully_qualified"]
    return [
        (char, data["en"].strip(":").replace("_", " "))
        for char, data in emoji.EMOJI_DATA.items()
        if data.get("status") == qualified
    ]


def load_emoji_dataset(
    size: int = 32, limit: int | None = None, cache_dir: str | Path | None = None
) -> ImageTensorDataset:
    """Rendered emoji (N, 3, size, size) in [-1, 1]; ``captions`` holds their names."""
    if size not in (32, 64):
        raise ValueError(f"emoji size must be 32 or 64, got {size}")
    font_path = find_emoji_font()
    names = _emoji_names()[:limit]
    cache = Path(cache_dir or Path.home() / ".cache" / "genmodels")
    cache_file = cache / f"emoji-{size}-{len(names)}.npz"
    if cache_file.is_file():
        data = np.load(cache_file, allow_pickle=False)
        images, captions = data["images"], [str(c) for c in data["captions"]]
    else:
        font = ImageFont.truetype(font_path, _STRIKE)
        rendered = [(render_emoji(c, font, size), name) for c, name in names]
        kept = [(np.asarray(img), name) for img, name in rendered if img is not None]
        images = np.stack([img for img, _ in kept])  # (N, size, size, 3) uint8
        captions = [name for _, name in kept]
        cache.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(f".tmp{os.getpid()}.npz")
        np.savez(tmp, images=images, captions=np.array(captions))
        os.replace(tmp, cache_file)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    return ImageTensorDataset(x.contiguous(), captions=captions)
