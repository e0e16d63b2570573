"""The issue-16 flags end to end: hires fix, prompt editing, clip skip, guidance rescale,
variation seeds, --from-file, --vae, SDXL sizes and the refiner; every field written, read back
by --from-png and re-run bit-identically; ignored PNG fields named in warnings."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from genmodels.cli.generate import main
from genmodels.pipelines.build import build_pipeline, save_pipeline
from genmodels.pipelines.images import save_png
from genmodels.pipelines.metadata import model_hash, parameters_from_infotext, read_png_parameters

FAST = ["--steps", "3", "--dtype", "fp32", "--device", "cpu", "--quiet", "--seed", "7"]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("flags")
    paths = {name: root / f"{name}.safetensors" for name in ("sd1", "xl", "xl-refiner")}
    save_pipeline(build_pipeline(), paths["sd1"])
    save_pipeline(build_pipeline(model_type="sdxl-base"), paths["xl"])
    save_pipeline(build_pipeline(model_type="sdxl-refiner", seed=1), paths["xl-refiner"])
    return paths


def _pngs(out: Path) -> list[Path]:
    return sorted(out.glob("0*.png"))


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def _rerun(png: Path, ckpt: Path, out: Path, *extra: str) -> Path:
    argv = ["txt2img", "--ckpt", str(ckpt), "--from-png", str(png), "--outdir", str(out),
            "--dtype", "fp32", "--device", "cpu", "--quiet", *extra]  # fmt: skip
    assert main(argv) == 0
    return _pngs(out)[0]


def test_every_field_written_read_back_and_rerun_identical(ckpts, tmp_path, capsys) -> None:
    out = tmp_path / "a"
    argv = ["txt2img", "--ckpt", str(ckpts["sd1"]), "--prompt", "a [cat:dog:0.5] [red|blue]",
            "--negative-prompt", "[blurry::2]", "--width", "24", "--height", "16",
            "--clip-skip", "2", "--guidance-rescale", "0.5", "--variation-seed", "11",
            "--variation-strength", "0.3", "--hires", "--hires-scale", "1.5", "--hires-steps", "2",
            "--hires-upscaler", "Latent (bicubic antialiased)", "--hires-strength", "0.55",
            "--hires-sampler", "Euler a", "--vae", str(ckpts["sd1"]), "--prediction", "eps",
            "--batch-size", "2", "--outdir", str(out), *FAST]  # fmt: skip
    assert main(argv) == 0
    first, second = _pngs(out)
    assert Image.open(first).size == (36, 24)  # whole latent pixels of the tiny VAE (4)
    text = read_png_parameters(first)
    for field in ("Size: 24x16", "Clip skip: 2", "CFG Rescale phi: 0.5", "Variation seed: 11",
                  "Variation seed strength: 0.3", "Hires upscale: 1.5", "Hires steps: 2",
                  "Hires upscaler: Latent (bicubic antialiased)", "Denoising strength: 0.55",
                  "Hires sampler: Euler a", f"VAE hash: {model_hash(ckpts['sd1'])}",
                  "VAE: sd1.safetensors", "Prediction: eps"):  # fmt: skip
        assert field in text, field
    p = parameters_from_infotext(text)
    assert (p.prompt, p.negative_prompt) == ("a [cat:dog:0.5] [red|blue]", "[blurry::2]")
    capsys.readouterr()
    # re-run of each PNG at the same batch size: bit-identical, and nothing is ignored
    again = _rerun(first, ckpts["sd1"], tmp_path / "b", "--batch-size", "2",
                   "--vae", str(ckpts["sd1"]))  # fmt: skip
    assert np.array_equal(_pixels(again), _pixels(first))
    assert "warning" not in capsys.readouterr().err
    pair = _pngs(tmp_path / "b")
    assert np.array_equal(_pixels(pair[1]), _pixels(second))
    assert read_png_parameters(again) == text


def test_from_png_warns_about_each_ignored_field(ckpts, tmp_path, capsys) -> None:
    png = tmp_path / "a1111.png"
    text = ("a cat\nSteps: 2, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 5, Seed: 3, "
            "Size: 16x16, Model hash: 0123456789, Model: other, VAE: kl-f8.pt, "
            "ADetailer model: \"face: yolo\", Hires upscale: 2, Hires upscaler: R-ESRGAN 4x+, "
            "Denoising strength: 0.5, Refiner: sd_xl_refiner [7440042bbd], "
            "Refiner switch at: 0.8, Version: v1.10.1")  # fmt: skip
    save_png(Image.new("RGB", (32, 32)), png, text)
    out = _rerun(png, ckpts["sd1"], tmp_path / "o")
    err = capsys.readouterr().err
    assert "was made with model other [0123456789]" in err
    for field in ("ADetailer model: face: yolo", "Hires upscaler: R-ESRGAN 4x+", "Version: v1.10.1",
                  "Refiner: sd_xl_refiner", "VAE: kl-f8.pt"):  # fmt: skip
        assert re.search(rf"warning: --from-png .*ignoring {re.escape(field)}", err), field
    p = parameters_from_infotext(read_png_parameters(out))
    assert Image.open(out).size == (32, 32)  # the hires fix ran, with the Lanczos stand-in
    assert (p.steps, p.sampler, p.scheduler, p.cfg_scale, p.seed) == (2, "dpmpp_2m", "karras",
                                                                       5.0, 3)  # fmt: skip
    assert (p.hires.scale, p.hires.upscaler, p.hires.denoising_strength) == (2.0, "Lanczos", 0.5)


def test_from_file_runs_each_line(ckpts, tmp_path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\n\n[a dog|a fox]\n", encoding="utf-8")
    out = tmp_path / "o"
    argv = ["txt2img", "--ckpt", str(ckpts["sd1"]), "--from-file", str(prompts), "--width", "16",
            "--height", "16", "--outdir", str(out), *FAST]  # fmt: skip
    assert main(argv) == 0
    got = [parameters_from_infotext(read_png_parameters(p)) for p in _pngs(out)]
    assert [(p.prompt, p.seed) for p in got] == [("a cat", 7), ("[a dog|a fox]", 7)]


def test_sdxl_refiner_and_size_flags(ckpts, tmp_path) -> None:
    out = tmp_path / "o"
    argv = [
        "txt2img",
        "--ckpt",
        str(ckpts["xl"]),
        "--prompt",
        "a cat",
        "--width",
        "16",
        "--height",
        "16",
        "--refiner",
        str(ckpts["xl-refiner"]),
        "--refiner-switch-at",
        "0.5",
        "--original-size",
        "32x24",
        "--crop-top-left",
        "4x0",
        "--target-size",
        "16x16",
        "--aesthetic-score",
        "7",
        "--sampler",
        "Euler a",
        "--outdir",
        str(out),
        *FAST,
    ]
    assert main(argv) == 0
    (png,) = _pngs(out)
    text = read_png_parameters(png)
    h = model_hash(ckpts["xl-refiner"])
    for field in (f"Refiner: xl-refiner [{h}]", "Refiner switch at: 0.5",
                  "SDXL original size: 32x24", "SDXL crop top left: 4x0",
                  "SDXL target size: 16x16", "Aesthetic score: 7.0"):  # fmt: skip
        assert field in text, field
    again = _rerun(png, ckpts["xl"], tmp_path / "b", "--refiner", str(ckpts["xl-refiner"]))
    assert np.array_equal(_pixels(again), _pixels(png))
    plain = _rerun(png, ckpts["xl"], tmp_path / "c")  # without the refiner file: a warning
    assert not np.array_equal(_pixels(plain), _pixels(png))


BAD = [
    (["--clip-skip", "0"], "--clip-skip must be >= 1"),
    (["--guidance-rescale", "2"], r"--guidance-rescale must be in \[0, 1\]"),
    (["--variation-strength", "0.5"], "--variation-strength needs a --variation-seed"),
    (["--refiner", "MISSING"], "refiner checkpoint not found"),
    (["--refiner", "CKPT", "--refiner-switch-at", "2"], r"--refiner-switch-at must be in \[0, 1\]"),
    (["--hires", "--hires-scale", "0"], "hires scale must be a positive number"),
    (["--hires", "--hires-strength", "0"], r"hires denoising strength must be in \(0, 1\]"),
    (["--hires", "--refiner", "CKPT"], "--hires with --refiner is not supported"),
    (["--hires", "--hires-resize", "0x0"], "hires resize must be"),
    (["--from-file", "MISSING"], "--from-file .*cannot read it"),
    (["--width", "12"], "--width must be a positive multiple of 8"),
]


@pytest.mark.parametrize(("args", "message"), BAD)
def test_bad_flags(ckpts, tmp_path, capsys, args, message) -> None:
    subs = {"MISSING": str(tmp_path / "missing"), "CKPT": str(ckpts["sd1"])}
    out = tmp_path / "out"
    argv = [
        "txt2img",
        "--ckpt",
        str(ckpts["sd1"]),
        "--prompt",
        "a cat",
        "--width",
        "16",
        "--height",
        "16",
        "--outdir",
        str(out),
        *FAST,
        *[subs.get(a, a) for a in args],
    ]
    assert main(argv) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not out.exists() or not any(out.iterdir())


def test_from_file_lines_must_name_the_same_loras() -> None:
    from genmodels.cli.generation_flags import check_same_loras

    check_same_loras(["a <lora:x:0.5> cat", "<lora:x:0.5> a dog"])
    with pytest.raises(ValueError, match="different <lora:...> tags"):
        check_same_loras(["a <lora:x:0.5> cat", "a dog"])
