"""Input images: every colour mode to correct 8-bit pixels, only regular files, bounded size."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
from PIL import Image

from genmodels.pipelines.image_reading import load_image


def _px(image: Image.Image) -> np.ndarray:
    return np.asarray(image)


def test_16_bit_grey_is_scaled_not_clipped(tmp_path) -> None:
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as im:
        assert im.mode in ("I;16", "I")  # what PIL's convert("RGB") clipped at 255
    rgb = _px(load_image(tmp_path / "g16.png"))
    assert rgb.shape == (64, 64, 3) and (rgb == 255).mean() < 0.01
    np.testing.assert_allclose(rgb[..., 0], ramp / 257, atol=0.51)
    grey = _px(load_image(tmp_path / "g16.png", "L"))
    assert grey.max() == 255 and grey.min() == 0


def test_alpha_palette_cmyk_and_bilevel(tmp_path) -> None:
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    rgba.putpixel((0, 0), (0, 0, 255, 255))
    rgba.save(tmp_path / "rgba.png")
    out = _px(load_image(tmp_path / "rgba.png"))
    assert tuple(out[0, 0]) == (0, 0, 255) and tuple(out[1, 1]) == (255, 255, 255)  # on white
    mask = _px(load_image(tmp_path / "rgba.png", "L"))  # alpha is the mask (A1111)
    assert mask[0, 0] == 255 and mask[1, 1] == 0
    Image.new("LA", (4, 4), (0, 0)).save(tmp_path / "la.png")
    assert (_px(load_image(tmp_path / "la.png")) == 255).all()

    pal = Image.new("P", (4, 4), 1)
    pal.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    pal.putpixel((0, 0), 0)
    pal.info["transparency"] = 0
    pal.save(tmp_path / "p.png", transparency=0)
    out = _px(load_image(tmp_path / "p.png"))
    assert tuple(out[0, 0]) == (255, 255, 255) and tuple(out[1, 1]) == (10, 20, 30)

    Image.new("CMYK", (4, 4), (0, 255, 255, 0)).save(tmp_path / "c.jpg", quality=100)
    r, g, b = _px(load_image(tmp_path / "c.jpg"))[2, 2]
    assert r > 200 and g < 60 and b < 60  # red
    bits = Image.new("1", (4, 4), 0)
    bits.putpixel((1, 1), 1)
    bits.save(tmp_path / "b.png")
    assert _px(load_image(tmp_path / "b.png", "L"))[1, 1] == 255


def test_only_regular_files(tmp_path) -> None:
    with pytest.raises(ValueError, match="a directory"):
        load_image(tmp_path)
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(ValueError, match="not a regular file"):
        load_image(tmp_path / "fifo")  # returns at once: nothing opens it for writing
    with pytest.raises(ValueError, match="cannot read image .*missing"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "junk.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot read image .*junk"):
        load_image(tmp_path / "junk.png")


def test_pixel_limit_and_decompression_bomb(tmp_path, monkeypatch) -> None:
    Image.new("L", (64, 64)).save(tmp_path / "big.png")
    with pytest.raises(ValueError, match=r"64x64 = 4096 pixels, more than the limit of 1000"):
        load_image(tmp_path / "big.png", max_pixels=1000)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1500)  # warning above, error above 2x
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="decompression bomb"):
            load_image(tmp_path / "big.png")  # 4096 > 2 x 1500: PIL's error
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)
        with pytest.raises(ValueError, match="decompression bomb"):
            load_image(tmp_path / "big.png")  # PIL's warning, made an error
