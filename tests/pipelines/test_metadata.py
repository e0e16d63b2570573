"""A1111 ``parameters`` text: writing, parsing (ours and A1111-written texts), PNG round trip,
model hash."""

from __future__ import annotations

import hashlib

import pytest
from PIL import Image

from genmodels.pipelines.images import image_grid, save_png
from genmodels.pipelines.metadata import (
    GenerationParameters,
    format_infotext,
    format_png_parameters,
    model_hash,
    parameters_from_infotext,
    parse_infotext,
    read_png_parameters,
)

PARAMS = GenerationParameters(
    prompt="a (cat:1.2), sitting\nBREAK on a mat",
    negative_prompt="blurry, low quality",
    steps=25, sampler="dpmpp_2m", scheduler="karras", cfg_scale=6.5, seed=1234,
    width=640, height=512, denoising_strength=0.6, model_hash="0123456789",
    model_name="my model, v2",
)  # fmt: skip


def test_format_is_a1111_infotext() -> None:
    text = format_infotext(PARAMS)
    assert text.splitlines()[-1] == (
        "Steps: 25, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 1234, "
        'Size: 640x512, Model hash: 0123456789, Model: "my model, v2", Denoising strength: 0.6'
    )
    assert text.startswith("a (cat:1.2), sitting\nBREAK on a mat\nNegative prompt: blurry")


def test_round_trip() -> None:
    assert parameters_from_infotext(format_infotext(PARAMS)) == PARAMS
    plain = GenerationParameters(prompt="x", sampler="euler_ancestral", scheduler="normal")
    assert parameters_from_infotext(format_infotext(plain)) == plain
    assert "Negative prompt" not in format_infotext(plain)


def test_parse_a1111_written_text() -> None:
    text = (
        "masterpiece, (cat:1.3)\nNegative prompt: ugly\n"
        "Steps: 30, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 42, Size: 512x768, "
        "Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Clip skip: 2, Version: v1.6.0"
    )
    d = parse_infotext(text)
    assert d["Size-1"] == "512" and d["Size-2"] == "768" and d["Clip skip"] == "2"
    p = parameters_from_infotext(text)
    assert (p.prompt, p.negative_prompt, p.steps, p.seed) == ("masterpiece, (cat:1.3)", "ugly",
                                                              30, 42)  # fmt: skip
    assert (p.sampler, p.scheduler, p.cfg_scale) == ("dpmpp_2m", "karras", 7.0)
    assert (p.width, p.height, p.model_hash) == (512, 768, "6ce0161689")
    assert p.extra == {"Clip skip": "2", "Version": "v1.6.0"}
    # fewer than three key: value pairs on the last line -> it is part of the prompt
    assert parse_infotext("just: a prompt")["Prompt"] == "just: a prompt"


def test_bad_parameters() -> None:
    with pytest.raises(ValueError, match="not a valid A1111 parameters text"):
        parameters_from_infotext("x\nSteps: many, Sampler: Euler, Seed: 1")
    with pytest.raises(ValueError, match="unknown sampler"):
        parameters_from_infotext("x\nSteps: 2, Sampler: Nope, Seed: 1")


def test_png_round_trip_and_info(tmp_path) -> None:
    path = save_png(Image.new("RGB", (8, 8)), tmp_path / "a.png", format_infotext(PARAMS))
    assert read_png_parameters(path) == format_infotext(PARAMS)
    assert [f.name for f in tmp_path.iterdir()] == ["a.png"]  # no temporary file left
    shown = format_png_parameters(path)
    assert "Seed" in shown and "1234" in shown and "Size-1" not in shown
    save_png(Image.new("RGB", (8, 8)), tmp_path / "b.png")
    with pytest.raises(ValueError, match="no 'parameters' text chunk"):
        read_png_parameters(tmp_path / "b.png")
    with pytest.raises(ValueError, match="cannot read image"):
        read_png_parameters(tmp_path / "missing.png")


def test_model_hash(tmp_path) -> None:
    data = bytes(range(256)) * 5000
    (tmp_path / "m.safetensors").write_bytes(data)
    assert model_hash(tmp_path / "m.safetensors") == hashlib.sha256(data).hexdigest()[:10]
    assert model_hash(tmp_path) is None


def test_grid() -> None:
    ims = [Image.new("RGB", (4, 3), (i * 50, 0, 0)) for i in range(5)]
    grid = image_grid(ims, cols=2)
    assert grid.size == (8, 9) and grid.getpixel((4, 3)) == (150, 0, 0)
    with pytest.raises(ValueError, match="same size"):
        image_grid([Image.new("RGB", (4, 3)), Image.new("RGB", (3, 3))])
