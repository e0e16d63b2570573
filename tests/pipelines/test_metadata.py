"""A1111 ``parameters`` text: writing, parsing (ours and A1111-written texts), PNG round trip,
model hash."""

from __future__ import annotations

import hashlib
import re

import pytest
from PIL import Image

from genmodels.pipelines.images import image_grid, save_png
from genmodels.pipelines.metadata import (
    MAX_INFOTEXT,
    GenerationParameters,
    _pairs,
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
    assert p.clip_skip == 2 and p.extra == {"Version": "v1.6.0"}
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


TRICKY_PROMPTS = [
    ("a cat\nNegative prompt: a dog", ""),  # would re-run with a negative prompt
    ("a cat", "blurry\nNegative prompt: x"),
    ("  leading blanks\nand trailing  ", ""),
    ("", "only negative"),
    ('"quoted"', 'back\\slash, "and" quotes'),
    ("line\r\nbreaks\n\n", "\n"),
    ("Steps: 1, Sampler: Euler, CFG scale: 7", ""),  # a prompt that looks like parameters
]


@pytest.mark.parametrize(("prompt", "negative"), TRICKY_PROMPTS)
def test_every_prompt_round_trips(prompt, negative) -> None:
    p = GenerationParameters(prompt=prompt, negative_prompt=negative, model_name='"m", x')
    assert parameters_from_infotext(format_infotext(p)) == p


def test_seeds_beyond_32_bit_round_trip() -> None:
    p = GenerationParameters(prompt="x", seed=2**32)  # --seed 4294967295 --batch-size 2
    assert parameters_from_infotext(format_infotext(p)).seed == 2**32
    with pytest.raises(ValueError, match="Seed: .* out of range"):
        parameters_from_infotext("x\nSteps: 2, Sampler: Euler, Seed: 18446744073709551616")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("Steps: 1e20, Sampler: Euler, Seed: 1", "Steps: '1e20' is not a valid int"),
        ("Steps: 100000000000000000000, Sampler: Euler, Seed: 1", "Steps: .* out of range"),
        ("Steps: 2, CFG scale: nan, Seed: 1", "CFG scale: nan is out of range"),
        ("Steps: 2, CFG scale: inf, Seed: 1", "CFG scale: inf is out of range"),
        ("Steps: 2, Denoising strength: 1.5, Seed: 1", "Denoising strength: 1.5 is out of range"),
        ("Steps: 2, Size: 0x64, Seed: 1", "Size-1: 0 is out of range"),
    ],
)
def test_numbers_are_range_checked(line, message) -> None:
    with pytest.raises(ValueError, match=message):
        parameters_from_infotext("x\n" + line)


def test_empty_and_oversized_chunks_are_refused(tmp_path) -> None:
    with pytest.raises(ValueError, match="no generation parameters"):
        parameters_from_infotext("  \n")
    save_png(Image.new("RGB", (8, 8)), tmp_path / "empty.png", "")
    with pytest.raises(ValueError, match="no generation parameters"):
        read_png_parameters(tmp_path / "empty.png")
    save_png(Image.new("RGB", (8, 8)), tmp_path / "big.png", "x" * (MAX_INFOTEXT + 1))
    with pytest.raises(ValueError, match="more than the 65536 allowed"):
        read_png_parameters(tmp_path / "big.png")
    with pytest.raises(ValueError, match="longer than the 65536 allowed"):
        parse_infotext("x" * (MAX_INFOTEXT + 1))


def test_long_lines_parse(monkeypatch) -> None:
    """A 60 KB last line (A1111's regex took minutes on such lines): same pairs as the regex."""
    words = "word " * 6_000  # a long run without ':' is the quadratic case
    d = parse_infotext(f"prompt\n{words}, Steps: 2, Sampler: Euler, Seed: 3, Note: {words}")
    assert d["Steps"] == "2" and d["Seed"] == "3" and d["Note"] == words.strip()
    assert d["Prompt"] == "prompt"
    p = GenerationParameters(prompt="a, b: c " * 3000)  # stored twice: a trailing blank
    assert parameters_from_infotext(format_infotext(p)) == p
    line = 'A: 1, -b: 2, "c": 3, d e: "x, y", f/g: "unterminated, h: 4, :5, ij:6'
    reference = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
    assert _pairs(line) == reference.findall(line)


def test_automatic_schedule_is_the_samplers_own() -> None:
    text = "a\nSteps: 20, Sampler: DDIM, Schedule type: Automatic, CFG scale: 7, Seed: 1"
    p = parameters_from_infotext(text)
    assert (p.sampler, p.scheduler) == ("ddim_a1111", "ddim_uniform")
    p = parameters_from_infotext(text.replace("DDIM", "Euler"))
    assert (p.sampler, p.scheduler) == ("euler", "normal")


def test_rng_cpu_is_ours_other_rngs_are_reported() -> None:
    text = "a\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 1, RNG: CPU"
    assert parameters_from_infotext(text).extra == {}
    assert parameters_from_infotext(text.replace("CPU", "GPU")).extra == {"RNG": "GPU"}
