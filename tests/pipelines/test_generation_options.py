"""Clip skip, guidance rescale, variation seeds, hires fix and the SDXL refiner hand-off with
tiny random-weight pipelines: analytic checks, end-to-end runs and their recorded parameters."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from genmodels.diffusion.noise import seeded_randn, slerp_noise
from genmodels.diffusion.sampling import sampler_sigmas
from genmodels.pipelines.build import build_pipeline
from genmodels.pipelines.conditioning import SDXLSizeConditioning, encode_prompts
from genmodels.pipelines.generate import HiresFix, txt2img
from genmodels.pipelines.hires import LATENT_UPSCALERS, hires_sigmas, upscale_latents
from genmodels.pipelines.metadata import format_infotext, parameters_from_infotext
from genmodels.pipelines.sampling_pass import refiner_switch_index
from genmodels.pipelines.scheduled_cfg import clip_skip

SMALL = dict(width=16, height=16, steps=4, seed=3)


@pytest.fixture(scope="module")
def pipe():
    return build_pipeline()


@pytest.fixture(scope="module")
def xl():
    return build_pipeline(model_type="sdxl-base"), build_pipeline(model_type="sdxl-refiner")


def _round_trip(p) -> None:
    assert parameters_from_infotext(format_infotext(p)) == p


# -- clip skip, guidance rescale -----------------------------------------------------------------


def test_clip_skip_takes_the_earlier_layer_with_final_norm(pipe) -> None:
    emb = pipe.text_encoder.embedders[0]
    ids = torch.tensor([emb.tokenizer.wrap(emb.tokenizer.encode("a cat"))])
    with clip_skip(pipe.text_encoder, 2, "sd1"):
        ctx, _ = encode_prompts(pipe.text_encoder, "a cat")
    expected = emb.model.hidden_state(ids, -2, True)  # A1111: hidden_states[-2], final norm
    torch.testing.assert_close(ctx, expected)
    assert emb.config.layer == -1  # restored
    with clip_skip(pipe.text_encoder, 2, "sdxl-base"):  # A1111 ignores it for SD 2.x / XL
        assert emb.config.layer == -1
    a = txt2img(pipe, "a cat", clip_skip=2, guidance_rescale=0.7, **SMALL)
    b = txt2img(pipe, "a cat", **SMALL)
    assert not torch.allclose(a.latents, b.latents)
    assert (a.parameters[0].clip_skip, a.parameters[0].guidance_rescale) == (2, 0.7)
    _round_trip(a.parameters[0])
    with pytest.raises(ValueError, match="clip_skip must be an integer >= 1"):
        txt2img(pipe, "a cat", clip_skip=0, **SMALL)
    with pytest.raises(ValueError, match="guidance_rescale must be a number in"):
        txt2img(pipe, "a cat", guidance_rescale=1.5, **SMALL)


# -- variation seeds -------------------------------------------------------------------------------


def test_slerp_noise_is_a1111s() -> None:
    a, b = seeded_randn((2, 4, 8, 8), [1, 2])
    torch.testing.assert_close(slerp_noise(0.0, a, b), a)
    torch.testing.assert_close(slerp_noise(1.0, a, b), b, atol=1e-5, rtol=0)
    mid = slerp_noise(0.5, a, b)
    # interpolation along great circles of each (channel, column) line over the rows (dim 1)
    na, nb, nm = (t.norm(dim=1) for t in (a, b, mid))
    assert (nm - (na + nb) / 2).abs().max() < 0.5 * na.mean()
    cos = (a / na[:, None] * b / nb[:, None]).sum(1)
    omega = torch.acos(cos)
    expected = (torch.sin(0.5 * omega) / torch.sin(omega))[:, None] * (a + b)
    torch.testing.assert_close(mid, expected)


def test_variation_seed(pipe) -> None:
    base = txt2img(pipe, "a cat", **SMALL)
    zero = txt2img(pipe, "a cat", variation_seed=9, variation_strength=0.0, **SMALL)
    assert torch.equal(zero.latents, base.latents) and zero.parameters[0].variation_seed is None
    full = txt2img(pipe, "a cat", variation_seed=9, variation_strength=1.0, **SMALL)
    other = txt2img(pipe, "a cat", **dict(SMALL, seed=9))  # Euler: only the first noise counts
    torch.testing.assert_close(full.latents, other.latents, atol=1e-4, rtol=0)
    half = txt2img(pipe, "a cat", variation_seed=9, variation_strength=0.5, batch_size=2, **SMALL)
    assert [(p.seed, p.variation_seed) for p in half.parameters] == [(3, 9), (4, 9)]
    single = txt2img(pipe, "a cat", variation_seed=9, variation_strength=0.5, **SMALL)
    torch.testing.assert_close(half.latents[:1], single.latents, atol=1e-4, rtol=0)  # batched
    _round_trip(half.parameters[1])
    with pytest.raises(ValueError, match="needs a variation_seed"):
        txt2img(pipe, "a cat", variation_strength=0.5, **SMALL)


# -- hires fix -------------------------------------------------------------------------------------


def test_hires_steps_follow_a1111() -> None:
    """Explicit second-pass steps: the last ``steps`` of ``int(steps / strength)``."""
    full = lambda n: torch.linspace(10, 0, n + 1)  # noqa: E731
    sigmas = hires_sigmas(full, 3, 0.5)
    assert torch.equal(sigmas, full(6)[3:]) and len(sigmas) == 4
    assert len(hires_sigmas(full, 10, 0.7)) == 11  # int(10 / 0.7) = 14 steps, the last 10
    assert len(hires_sigmas(full, 5, 1.0)) == 6  # min(strength, 0.999): int(5 / 0.999) = 5


def test_latent_upscalers_are_a1111s_modes() -> None:
    x = torch.randn(1, 4, 5, 7)
    for name, (mode, antialias) in LATENT_UPSCALERS.items():
        up = upscale_latents(x, 112, 80, name, 8, None, None)  # type: ignore[arg-type]
        assert up.shape == (1, 4, 10, 14)
        torch.testing.assert_close(up, F.interpolate(x, (10, 14), mode=mode, antialias=antialias))


@pytest.mark.parametrize("upscaler", ["Latent (nearest)", "Lanczos"])
def test_hires_fix_end_to_end(pipe, upscaler: str) -> None:
    hr = HiresFix(scale=1.5, upscaler=upscaler, steps=2, denoising_strength=0.6,
                  sampler="DPM++ 2M", scheduler="karras")  # fmt: skip
    steps = []
    out = txt2img(pipe, "a [cat:dog:0.5]", hires=hr, callback=lambda i: steps.append(i["i"]),
                  **dict(SMALL, width=24))  # fmt: skip
    assert out.images[0].size == (36, 24)  # int(24 * 1.5), int(16 * 1.5): whole latent pixels
    assert steps == [0, 1, 2, 3, 0, 1]  # 4 first-pass steps, then exactly the 2 hires steps
    p = out.parameters[0]
    assert (p.width, p.height, p.hires) == (24, 16, replace(hr, sampler="dpmpp_2m"))
    text = format_infotext(p)
    for field in ("Hires upscale: 1.5", f"Hires upscaler: {upscaler}", "Hires steps: 2",
                  "Denoising strength: 0.6", "Hires sampler: DPM++ 2M"):  # fmt: skip
        assert field in text
    _round_trip(p)
    again = txt2img(pipe, "a [cat:dog:0.5]", hires=hr, **dict(SMALL, width=24))
    assert torch.equal(again.latents, out.latents)
    assert not torch.equal(txt2img(pipe, "a [cat:dog:0.5]", **dict(SMALL, width=32, height=24),
                                   hires=None).latents, out.latents)  # fmt: skip


# -- SDXL refiner hand-off -------------------------------------------------------------------------


def test_switch_index_is_diffusers_cutoff(pipe) -> None:
    _, sigmas = sampler_sigmas(pipe.denoiser, "euler", "normal", 10)
    t = pipe.denoiser.sigma_to_t(sigmas[:-1])
    for switch in (0.0, 0.3, 0.8, 1.0):
        cutoff = round(1000 - switch * 1000)  # diffusers: discrete_timestep_cutoff
        assert refiner_switch_index(pipe.denoiser, sigmas, switch) == int((t >= cutoff).sum())
    assert refiner_switch_index(pipe.denoiser, sigmas, 1.0) == 10  # the base runs every step
    assert refiner_switch_index(pipe.denoiser, sigmas, 0.0) == 0  # the refiner runs every step


@pytest.mark.parametrize("sampler", ["Euler a", "DDIM", "Heun"])
def test_refiner_continuing_the_same_model_equals_one_run(pipe, sampler: str) -> None:
    """The hand-off keeps the latents, the ancestral noise stream and the prompt schedule's
    step: refining with the base model itself gives the uninterrupted run, bit for bit."""
    opts = dict(SMALL, sampler=sampler, batch_size=2, steps=6)
    plain = txt2img(pipe, "a [cat:dog:3]", **opts)
    split = txt2img(pipe, "a [cat:dog:3]", refiner=pipe, refiner_switch_at=0.5, **opts)
    assert torch.equal(split.latents, plain.latents)
    assert split.parameters[0].refiner_switch_at == 0.5


def test_sdxl_base_to_refiner(xl) -> None:
    base, refiner = xl
    size = SDXLSizeConditioning((32, 24), crop_coords_top_left=(4, 0), aesthetic_score=7.0)
    out = txt2img(base, "a cat", refiner=refiner, refiner_switch_at=0.8, sdxl=size, **SMALL)
    alone = txt2img(base, "a cat", sdxl=size, **SMALL)
    assert not torch.allclose(out.latents, alone.latents)
    p = out.parameters[0]
    assert (p.refiner_name, p.refiner_switch_at) == ("refiner", 0.8)
    assert (p.sdxl_original_size, p.sdxl_crop, p.aesthetic_score) == ((24, 32), (4, 0), 7.0)
    _round_trip(p)
    text = format_infotext(p)
    assert "Refiner: refiner, Refiner switch at: 0.8" in text
    assert "SDXL original size: 24x32, SDXL crop top left: 4x0" in text
    # switch at 1.0: the refiner never runs (diffusers: denoising_end=1.0)
    never = txt2img(base, "a cat", refiner=refiner, refiner_switch_at=1.0, sdxl=size, **SMALL)
    assert torch.equal(never.latents, alone.latents)
    with pytest.raises(ValueError, match="refiner_switch_at must be a number in"):
        txt2img(base, "a cat", refiner=refiner, refiner_switch_at=1.5, **SMALL)
    with pytest.raises(ValueError, match="inpainting model cannot be a refiner"):
        txt2img(base, "a cat", refiner=build_pipeline(model_type="sdxl-base", inpainting=True),
                **SMALL)  # fmt: skip


def test_any_multiple_of_8(pipe) -> None:
    out = txt2img(pipe, "a cat", **dict(SMALL, width=72, height=56, steps=2))
    assert out.images[0].size == (72, 56) and out.latents.shape[-2:] == (14, 18)
    with pytest.raises(ValueError, match="width must be a positive multiple of 8 for this model"):
        txt2img(pipe, "a cat", **dict(SMALL, width=60))


@pytest.mark.parametrize(
    ("base", "resize", "up", "crop", "final"),
    [
        ((512, 768), (1024, 1024), (1024, 1536), (0, 64), (1024, 1024)),  # cover, crop rows
        ((768, 512), (1024, 1024), (1536, 1024), (64, 0), (1024, 1024)),
        ((512, 768), (1024, 0), (1024, 1536), (0, 0), (1024, 1536)),  # keep the aspect
        ((512, 768), (0, 1152), (768, 1152), (0, 0), (768, 1152)),
    ],
)
def test_hires_resize_is_a1111s(base, resize, up, crop, final) -> None:
    hr = HiresFix(resize=resize)
    assert hr.plan(*base) == (up, crop)
    assert hr.target_size(*base) == final


def test_hires_resize_end_to_end(pipe) -> None:
    hr = HiresFix(resize=(32, 32), steps=1, upscaler="Latent (nearest)")
    out = txt2img(pipe, "a cat", hires=hr, **dict(SMALL, width=16, height=24))
    assert out.images[0].size == (32, 32)  # 16x24 -> 32x48, centre 32x32
    assert "Hires resize: 32x32" in format_infotext(out.parameters[0])
    assert "Hires upscale:" not in format_infotext(out.parameters[0])
    _round_trip(out.parameters[0])
    same = txt2img(pipe, "a cat", hires=HiresFix(scale=1.0), **SMALL)  # A1111: nothing to do
    assert same.parameters[0].hires is None
    assert torch.equal(same.latents, txt2img(pipe, "a cat", **SMALL).latents)


def test_hires_prompt(pipe) -> None:
    base = dict(SMALL, hires=HiresFix(steps=1, denoising_strength=0.5))
    plain = txt2img(pipe, "a cat", **base)
    hr = HiresFix(steps=1, denoising_strength=0.5, prompt="a dog, sharp", negative_prompt="x")
    other = txt2img(pipe, "a cat", **dict(base, hires=hr))
    assert not torch.allclose(plain.latents, other.latents)
    text = format_infotext(other.parameters[0])
    assert 'Hires prompt: "a dog, sharp", Hires negative prompt: x' in text
    _round_trip(other.parameters[0])
    assert other.parameters[0].prompt == "a cat"


def test_eta(pipe) -> None:
    a = txt2img(pipe, "a cat", sampler="Euler a", **SMALL)
    b = txt2img(pipe, "a cat", sampler="Euler a", eta=0.0, **SMALL)
    euler = txt2img(pipe, "a cat", sampler="Euler", **SMALL)
    assert not torch.allclose(a.latents, b.latents)
    torch.testing.assert_close(b.latents, euler.latents)  # eta 0: no ancestral noise
    assert "Eta: 0.0" in format_infotext(b.parameters[0])
    d = txt2img(pipe, "a cat", sampler="DDIM", eta=0.5, **SMALL).parameters[0]
    assert "Eta DDIM: 0.5" in format_infotext(d)
    _round_trip(d)
    # a sampler without noise ignores eta (as A1111)
    assert torch.equal(txt2img(pipe, "a cat", eta=0.3, **SMALL).latents, euler.latents)


def test_controlnet_with_hires_and_prompt_editing(pipe) -> None:
    """ControlNet units act in the first pass and, with the image at the new size, in the
    hires pass; a refiner run keeps them on the base model."""
    from genmodels.pipelines.controlnet import ControlUnit

    from .controlnet_files import controlnet_for

    hint = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    unit = ControlUnit(controlnet_for(pipe), hint)
    hr = HiresFix(steps=1, denoising_strength=0.5)
    out = txt2img(pipe, "a [cat|dog]", hires=hr, control=[unit], **SMALL)
    plain = txt2img(pipe, "a [cat|dog]", hires=hr, **SMALL)
    assert out.images[0].size == (32, 32) and "ControlNet 0" in out.parameters[0].extra
    assert (out.latents - plain.latents).abs().max() > 1e-4
    split = txt2img(pipe, "a cat", refiner=pipe, refiner_switch_at=0.5, control=[unit], **SMALL)
    assert split.latents.shape == plain.latents.shape[:2] + (4, 4)
