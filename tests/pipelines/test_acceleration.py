"""Training-free accelerations in generation (DeepCache, the CFG cut-off): off by default and
exact when off, with interval 1 or a cut-off at sigma 0; on, they change the image a little,
work with every sampler, with ControlNet, LoRA, img2img / inpainting models and the hires fix,
and round-trip through the PNG parameters."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genmodels.cli.main import main
from genmodels.diffusion.samplers.registry import SAMPLERS
from genmodels.pipelines.build import build_pipeline, save_pipeline
from genmodels.pipelines.controlnet import ControlUnit, load_controlnet
from genmodels.pipelines.generate import img2img, txt2img
from genmodels.pipelines.hires import HiresFix
from genmodels.pipelines.metadata import (
    GenerationParameters,
    format_infotext,
    parameters_from_infotext,
    read_png_parameters,
)

from .controlnet_files import controlnet_for, save_ldm

RUN = dict(width=32, height=32, steps=6, cfg_scale=5.0, seed=3)


@pytest.fixture(scope="module")
def sd1():
    return build_pipeline()


def test_off_interval_one_and_cutoff_zero_are_exact(sd1) -> None:
    exact = txt2img(sd1, "a cat", "dog", **RUN)
    same = txt2img(sd1, "a cat", "dog", **RUN, cache_interval=1, cache_depth=2, cfg_cutoff=0.0)
    assert torch.equal(same.latents, exact.latents)
    assert same.parameters[0] == exact.parameters[0]  # nothing recorded when off
    assert "NGMS" not in format_infotext(same.parameters[0])
    cached = txt2img(sd1, "a cat", "dog", **RUN, cache_interval=2, cache_depth=1)
    cut = txt2img(sd1, "a cat", "dog", **RUN, cfg_cutoff=5.0)
    for other in (cached, cut):
        assert not torch.equal(other.latents, exact.latents)
        assert (other.latents - exact.latents).norm() < 0.5 * exact.latents.norm()


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_every_sampler_runs_cached(sd1, sampler: str) -> None:
    out = txt2img(sd1, "a cat", **RUN, sampler=sampler, cache_interval=3, cache_depth=2,
                  cfg_cutoff=1.0)  # fmt: skip
    assert torch.isfinite(out.latents).all()


def test_with_controlnet_lora_img2img_and_hires(sd1, tmp_path) -> None:
    from tests.adapters.helpers import kohya_lora

    cn = load_controlnet(save_ldm(controlnet_for(sd1), tmp_path / "cn.safetensors"), sd1)
    hint = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    control = [ControlUnit(cn, hint, weight=0.8)]
    exact = txt2img(sd1, "a cat", **RUN, control=control)
    same = txt2img(sd1, "a cat", **RUN, control=control, cache_interval=1)
    assert torch.equal(same.latents, exact.latents)
    assert torch.isfinite(
        txt2img(sd1, "a cat", **RUN, control=control, cache_interval=2).latents
    ).all()
    kohya_lora(sd1, tmp_path / "ink.safetensors", seed=4, select="attn")
    sd1.load_lora(tmp_path / "ink.safetensors", 0.7)
    try:
        out = img2img(sd1, exact.images[0], "a cat", strength=0.6, **RUN, cache_interval=2)
        hires = HiresFix(scale=1.5, steps=3, denoising_strength=0.5)
        big = txt2img(sd1, "a cat", **RUN, hires=hires, cache_interval=2, cfg_cutoff=1.0)
    finally:
        sd1.unload_loras()
    assert torch.isfinite(out.latents).all() and big.images[0].size == (48, 48)
    inpainting = build_pipeline(inpainting=True)
    assert torch.isfinite(txt2img(inpainting, "a cat", **RUN, cache_interval=2).latents).all()


def test_bad_settings_fail_before_any_work(sd1) -> None:
    n = len(sd1.unet.input_blocks)
    with pytest.raises(ValueError, match=f"below the UNet's {n} input blocks"):
        txt2img(sd1, "a cat", **RUN, cache_interval=2, cache_depth=n)
    with pytest.raises(ValueError, match="cache interval"):
        txt2img(sd1, "a cat", **RUN, cache_interval=0)
    with pytest.raises(ValueError, match="CFG cut-off"):
        txt2img(sd1, "a cat", **RUN, cfg_cutoff=float("nan"))


def test_infotext_round_trip_and_from_png_rerun(sd1, tmp_path, capsys) -> None:
    p = GenerationParameters("a cat", cfg_cutoff=0.75, cache_interval=3, cache_depth=2)
    text = format_infotext(p)
    assert "NGMS: 0.75" in text and "Cache interval: 3" in text and "Cache depth: 2" in text
    assert parameters_from_infotext(text) == p
    ckpt = tmp_path / "tiny.safetensors"
    save_pipeline(sd1, ckpt)
    args = ["txt2img", "--ckpt", str(ckpt), "--prompt", "a cat", "--steps", "4", "--width",
            "32", "--height", "32", "--seed", "2", "--dtype", "fp32", "--device", "cpu",
            "--quiet"]  # fmt: skip
    fast = [*args, "--cache-interval", "2", "--cache-depth", "2", "--cfg-cutoff", "0.5"]
    assert main([*fast, "--outdir", str(tmp_path / "a")]) == 0
    (first,) = (tmp_path / "a").glob("*.png")
    stored = parameters_from_infotext(read_png_parameters(first))
    assert (stored.cache_interval, stored.cache_depth, stored.cfg_cutoff) == (2, 2, 0.5)
    rerun = ["txt2img", "--ckpt", str(ckpt), "--from-png", str(first), "--dtype", "fp32",
             "--device", "cpu", "--quiet", "--outdir", str(tmp_path / "b")]  # fmt: skip
    assert main(rerun) == 0
    (second,) = (tmp_path / "b").glob("*.png")
    from PIL import Image

    assert np.array_equal(np.asarray(Image.open(first)), np.asarray(Image.open(second)))
    assert "--cache-interval must be >= 1" in _error(args + ["--cache-interval", "0"], capsys)


def _error(args: list[str], capsys) -> str:
    assert main(args) == 2
    return capsys.readouterr().err
