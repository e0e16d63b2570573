"""txt2img / img2img / inpaint with tiny random-weight pipelines: reproducibility, A1111 img2img
strength, inpainting keeps the unmasked region, SDXL size conditioning, bad input."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.embeddings import Timesteps

from genmodels.pipelines.build import build_pipeline
from genmodels.pipelines.conditioning import SDXLSizeConditioning, sdxl_vector
from genmodels.pipelines.generate import (
    LatentMaskBlend,
    decode_latents,
    encode_images,
    img2img,
    inpaint,
    sampling_steps,
    txt2img,
)

SMALL = dict(width=16, height=16, steps=3)


@pytest.fixture(scope="module")
def pipe():
    return build_pipeline()


@pytest.fixture(scope="module")
def image(pipe) -> torch.Tensor:
    return torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def test_deterministic_and_seed_dependent(pipe) -> None:
    a = txt2img(pipe, "a (red:1.3) cat", seed=3, **SMALL)
    b = txt2img(pipe, "a (red:1.3) cat", seed=3, **SMALL)
    c = txt2img(pipe, "a (red:1.3) cat", seed=4, **SMALL)
    assert torch.equal(a.pixels, b.pixels)
    assert not torch.allclose(a.pixels, c.pixels)
    for other in (dict(prompt="a (red:1.6) cat"), dict(cfg_scale=1.0), dict(negative_prompt="x")):
        kwargs = dict(SMALL, prompt="a (red:1.3) cat", seed=3) | other
        assert not torch.allclose(txt2img(pipe, **kwargs).pixels, a.pixels, atol=1e-4)
    assert a.images[0].size == (16, 16) and a.pixels.shape == (1, 3, 16, 16)
    p = a.parameters[0]
    assert (p.seed, p.sampler, p.scheduler, p.steps, p.width) == (3, "euler", "normal", 3, 16)


def test_batch_of_four_equals_four_singles(pipe) -> None:
    """Exactly equal in float64; in float32 up to the rounding of batched kernels (~1e-6 rel.)."""
    opts = dict(SMALL, sampler="Euler a", negative_prompt="blurry")  # ancestral: step noise too
    pipe64 = build_pipeline(dtype=torch.float64)
    for model, tol in ((pipe64, 0.0), (pipe, 1e-5)):
        batch = txt2img(model, "a (cat:1.2)", seed=10, batch_size=4, **opts)
        singles = [txt2img(model, "a (cat:1.2)", seed=10 + i, **opts) for i in range(4)]
        assert [p.seed for p in batch.parameters] == [10, 11, 12, 13]
        latents = torch.cat([s.latents for s in singles])
        scale = float(latents.abs().max())
        torch.testing.assert_close(batch.latents, latents, atol=tol * scale, rtol=0)
        pixels = torch.cat([s.pixels for s in singles])
        torch.testing.assert_close(batch.pixels, pixels, atol=tol * 10, rtol=0)


def test_callback_sees_every_step(pipe) -> None:
    seen: list[int] = []
    txt2img(pipe, "a cat", callback=lambda info: seen.append(info["i"]), **SMALL)
    assert seen == [0, 1, 2]


def test_img2img_strength_semantics(pipe, image) -> None:
    assert [sampling_steps(20, s) for s in (0.0, 0.5, 0.75, 1.0)] == [0, 11, 16, 20]
    assert sampling_steps(20, None) == 20
    out = img2img(pipe, image, "a cat", strength=0.0, **SMALL)
    round_trip = decode_latents(pipe, encode_images(pipe, image))
    torch.testing.assert_close(out.pixels, round_trip, atol=1e-6, rtol=0)
    steps: list[int] = []
    half = img2img(pipe, image, "a cat", strength=0.5, callback=lambda i: steps.append(1), **SMALL)
    assert len(steps) == sampling_steps(3, 0.5) == 2
    assert half.parameters[0].denoising_strength == 0.5
    assert not torch.allclose(half.pixels, round_trip)


def test_inpaint_ordinary_model_keeps_unmasked(pipe, image) -> None:
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., :, 8:] = 1  # repaint the right half
    out = inpaint(pipe, image, mask, "a cat", seed=1, steps=3)
    init = encode_images(pipe, image)
    f = pipe.vae.downsample_factor
    torch.testing.assert_close(out.latents[..., : 8 // f], init[..., : 8 // f], rtol=0, atol=0)
    torch.testing.assert_close(out.pixels[..., :8], image[..., :8], rtol=0, atol=0)
    assert not torch.allclose(out.pixels[..., 8:], image[..., 8:], atol=0.05)


def test_inpaint_nine_channel_model(image) -> None:
    pipe9 = build_pipeline(inpainting=True)
    assert pipe9.inpainting
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., 4:12, 4:12] = 1
    out = inpaint(pipe9, image, mask, "a cat", batch_size=2, steps=3)
    keep = (1 - mask).bool().expand(2, 3, 16, 16)
    assert torch.equal(out.pixels[keep], image.expand(2, 3, 16, 16)[keep])
    t2i = txt2img(pipe9, "a cat", **SMALL)  # txt2img with an inpainting model works too
    assert t2i.pixels.shape == (1, 3, 16, 16)


def test_latent_mask_blend() -> None:
    init, keep = torch.full((1, 1, 2, 2), 5.0), torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    blend = LatentMaskBlend(lambda x, sigma: x * 0 - 1, init, keep)
    assert blend(torch.zeros(1, 1, 2, 2), torch.ones(1)).tolist() == [[[[5.0, -1.0], [-1.0, 5.0]]]]


def test_sdxl_size_conditioning_matches_diffusers() -> None:
    pooled = torch.randn(2, 24, generator=torch.Generator().manual_seed(0))
    size = SDXLSizeConditioning(original_size=(1024, 768), crop_coords_top_left=(16, 32))
    y = sdxl_vector(pooled, "sdxl-base", size, target=(512, 512))
    time_ids = torch.tensor([[1024.0, 768, 16, 32, 512, 512]] * 2)
    add_time_proj = Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0)
    ref = torch.cat([pooled, add_time_proj(time_ids.flatten()).reshape(2, -1)], dim=-1)
    torch.testing.assert_close(y, ref)
    y_ref = sdxl_vector(pooled, "sdxl-refiner", size, target=(512, 512), negative=True)
    ids = torch.tensor([[1024.0, 768, 16, 32, 2.5]] * 2)
    expected = torch.cat([pooled, add_time_proj(ids.flatten()).reshape(2, -1)], dim=-1)
    torch.testing.assert_close(y_ref, expected)
    with pytest.raises(ValueError, match="needs an SDXL model"):
        sdxl_vector(pooled, "sd1", size, target=(512, 512))


def test_sdxl_txt2img() -> None:
    pipe = build_pipeline(model_type="sdxl-base")
    size = SDXLSizeConditioning(original_size=(16, 16))
    a = txt2img(pipe, "a cat", sampler="DPM++ 2M Karras", sdxl=size, **SMALL)
    b = txt2img(pipe, "a cat", sampler="DPM++ 2M Karras", **SMALL)  # default: the output size
    torch.testing.assert_close(a.pixels, b.pixels, rtol=0, atol=0)
    assert (a.parameters[0].sampler, a.parameters[0].scheduler) == ("dpmpp_2m", "karras")


def test_sdxl_refiner_aesthetic_score() -> None:
    pipe = build_pipeline(model_type="sdxl-refiner")
    assert pipe.unet.config.adm_in_channels == 24 + 5 * 256
    high = txt2img(pipe, "a cat", sdxl=SDXLSizeConditioning((16, 16), aesthetic_score=6), **SMALL)
    low = txt2img(pipe, "a cat", sdxl=SDXLSizeConditioning((16, 16), aesthetic_score=2), **SMALL)
    assert not torch.allclose(high.pixels, low.pixels)


def test_reduced_precision_decode_is_finite(pipe) -> None:
    pipe16 = build_pipeline(dtype=torch.float16)
    pipe16.vae.decoder.conv_out.weight.data.fill_(1000.0)  # overflows fp16, not fp32
    pixels = decode_latents(pipe16, torch.ones(1, 4, 4, 4))
    assert pixels.dtype == torch.float32 and pixels.shape == (1, 3, 16, 16)
    assert next(pipe16.vae.parameters()).dtype == torch.float16  # restored after the retry
    pipe16.vae.decoder.conv_out.bias.data.fill_(float("inf"))  # not finite in fp32 either
    with pytest.raises(ValueError, match="VAE decoder's output .* NaN/Inf"):
        decode_latents(pipe16, torch.ones(1, 4, 4, 4))


BAD = [
    (dict(width=20), "width must be a positive multiple of 8"),
    (dict(height=0), "height must be a positive multiple of 8"),
    (dict(steps=0), "steps must be a positive integer"),
    (dict(batch_size=0), "batch_size must be a positive integer"),
    (dict(cfg_scale=-1), "cfg_scale must be a finite number >= 0"),
    (dict(cfg_scale=float("nan")), "cfg_scale must be a finite number >= 0"),
    (dict(cfg_scale=float("inf")), "cfg_scale must be a finite number >= 0"),
    (dict(sampler="nope"), "unknown sampler 'nope'; valid names: euler"),
    (dict(scheduler="nope"), "unknown scheduler 'nope'; valid: "),
    (dict(seed=-5), "seed must be an integer"),
    (dict(prompt=["a", "b"]), "prompt must be a str"),
    (dict(negative_prompt=None), "negative_prompt must be a str"),
]


@pytest.mark.parametrize(("change", "message"), BAD)
def test_bad_txt2img_input(pipe, change, message) -> None:
    kwargs = dict(SMALL, prompt="a cat") | change
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        txt2img(pipe, **kwargs)


def test_bad_img2img_and_inpaint_input(pipe, image, tmp_path) -> None:
    for strength in (-0.1, 1.5, "0.5"):
        with pytest.raises(ValueError, match="strength must be"):
            img2img(pipe, image, "a cat", strength=strength)
    with pytest.raises(ValueError, match="cannot read image"):
        img2img(pipe, tmp_path / "missing.png", "a cat")
    with pytest.raises(ValueError, match=r"image tensor must be \(B, 3, H, W\)"):
        img2img(pipe, torch.rand(1, 4, 16, 16), "a cat")
    with pytest.raises(ValueError, match="mask size .* differs from the image size"):
        inpaint(pipe, image, torch.ones(1, 1, 8, 16), "a cat")
    with pytest.raises(ValueError, match="width must be a positive multiple of 8"):
        inpaint(pipe, torch.rand(1, 3, 12, 12), torch.ones(1, 1, 12, 12), "a cat")
