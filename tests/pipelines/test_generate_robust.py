"""Generation refuses what it cannot do well before working, and never returns NaN images:
limits, seed range, non-finite weights, dtype/device names, inpaint sizes."""

from __future__ import annotations

import pytest
import torch

from genmodels.pipelines.build import build_pipeline, save_pipeline
from genmodels.pipelines.finite import NonFiniteError
from genmodels.pipelines.generate import img2img, inpaint, txt2img
from genmodels.pipelines.limits import NO_LIMITS, GenerationLimits, device_memory
from genmodels.pipelines.loading import load_pipeline

SMALL = dict(width=16, height=16, steps=2)


@pytest.fixture(scope="module")
def pipe():
    return build_pipeline()


def test_limits_refuse_before_any_work(pipe) -> None:
    with pytest.raises(ValueError, match=r"99968x99968 = \d+ pixels is more than the limit"):
        txt2img(pipe, "x", width=99968, height=99968, steps=2)
    with pytest.raises(ValueError, match="steps 10000000 is more than the limit of 10000"):
        txt2img(pipe, "x", width=16, height=16, steps=10_000_000)
    tight = GenerationLimits(max_memory=10_000)
    with pytest.raises(ValueError, match=r"16x16 x batch 4 needs about .* GiB of memory"):
        txt2img(pipe, "x", batch_size=4, limits=tight, **SMALL)
    assert txt2img(pipe, "x", limits=NO_LIMITS, **SMALL).pixels.shape == (1, 3, 16, 16)
    assert device_memory("cpu") > 2**20
    big = torch.rand(1, 3, 64, 64)
    with pytest.raises(ValueError, match="64x64 = 4096 pixels is more than the limit of 1000"):
        img2img(pipe, big, "x", limits=GenerationLimits(max_pixels=1000), steps=2)


def test_seed_range_is_what_can_be_read_back(pipe) -> None:
    out = txt2img(pipe, "x", seed=2**32 - 1, batch_size=2, **SMALL)
    assert [p.seed for p in out.parameters] == [2**32 - 1, 2**32]
    single = txt2img(pipe, "x", seed=2**32, **SMALL)
    torch.testing.assert_close(single.pixels[0], out.pixels[1], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="would go past the largest seed"):
        txt2img(pipe, "x", seed=2**64 - 1, batch_size=2, **SMALL)


def test_non_finite_weights_fail_naming_the_step() -> None:
    bad = build_pipeline()
    bad.unet.out[-1].bias.data[0] = float("nan")
    with pytest.raises(NonFiniteError, match="NaN/Inf values from step 1 of 2"):
        txt2img(bad, "x", **SMALL)
    vae = build_pipeline()
    vae.vae.decoder.conv_out.bias.data[0] = float("inf")
    with pytest.raises(ValueError, match="VAE decoder's output .* NaN/Inf"):
        txt2img(vae, "x", **SMALL)
    with pytest.raises(ValueError, match="image holds NaN/Inf"):
        img2img(build_pipeline(), torch.full((1, 3, 16, 16), float("nan")), "x", steps=2)


def test_inpaint_honours_width_and_height(pipe) -> None:
    image, mask = torch.rand(1, 3, 16, 16), torch.zeros(1, 1, 16, 16)
    mask[..., 8:] = 1
    out = inpaint(pipe, image, mask, "x", width=32, height=16, steps=2)
    assert out.images[0].size == (32, 16) and out.parameters[0].width == 32


def test_dtype_and_device_names(pipe, tmp_path) -> None:
    ckpt = tmp_path / "tiny.safetensors"
    save_pipeline(pipe, ckpt)
    for name, dtype in (("fp16", torch.float16), ("bfloat16", torch.bfloat16), ("fp32", None)):
        loaded = load_pipeline(ckpt, dtype=name)
        assert loaded.dtype == (dtype or torch.float32)
        assert next(loaded.unet.parameters()).dtype == loaded.dtype
    with pytest.raises(ValueError, match="must be a floating dtype"):
        load_pipeline(ckpt, dtype=torch.int8)
    with pytest.raises(ValueError, match="unknown dtype 'fp8'"):
        load_pipeline(ckpt, dtype="fp8")
    with pytest.raises(ValueError, match="unknown device 'banana'"):
        load_pipeline(ckpt, device="banana")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            load_pipeline(ckpt, device="cuda")


def test_concurrent_loads_leave_weight_init_alone(pipe, tmp_path) -> None:
    """Two threads loading at once once left ``nn.init`` stubbed out for the whole process."""
    from concurrent.futures import ThreadPoolExecutor

    ckpt = tmp_path / "tiny.safetensors"
    save_pipeline(pipe, ckpt)
    originals = {name: getattr(torch.nn.init, name) for name in ("normal_", "kaiming_uniform_")}
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: load_pipeline(ckpt), range(8)))
    assert {name: getattr(torch.nn.init, name) for name in originals} == originals
