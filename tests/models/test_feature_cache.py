"""DeepCache in the UNet: off and interval 1 are exact, a partial evaluation reuses exactly the
deep feature of the last full one, the schedule, new runs, shape changes and bad settings."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from genmodels.configs.unet import get_unet_config
from genmodels.diffusion.denoisers import DiscreteDenoiser, with_model
from genmodels.diffusion.sampling import sample
from genmodels.diffusion.schedules import make_alphas_cumprod
from genmodels.models.feature_cache import CachedModel, DeepCache
from genmodels.models.unet import UNetModel


def _tiny() -> UNetModel:
    torch.manual_seed(0)
    model = UNetModel(dataclasses.replace(get_unet_config("tiny")))
    with torch.no_grad():  # undo ldm's zero-init of the output convs so outputs are non-trivial
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model.eval()


def _inputs(b: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(b, 4, 16, 16, generator=g), torch.randn(b, 5, 32, generator=g)


def _plain_forward(unet: UNetModel, x, t, context) -> torch.Tensor:
    """The UNet's forward as written before the cache existed (the reference for 'off')."""
    from genmodels.nn.embeddings import timestep_embedding

    t = torch.as_tensor(t).reshape(-1).expand(x.shape[0])
    emb = unet.time_embed(timestep_embedding(t, unet.config.model_channels))
    h, hs = x, []
    for block in unet.input_blocks:
        h = block(h, emb, context)
        hs.append(h)
    h = unet.middle_block(h, emb, context)
    for block in unet.output_blocks:
        h = block(torch.cat([h, hs.pop()], dim=1), emb, context)
    return unet.out(h)


@torch.no_grad()
def test_off_and_interval_one_are_exact() -> None:
    unet, (x, ctx) = _tiny(), _inputs()
    cache = DeepCache(interval=1, depth=2)
    for t in (900.0, 600.0, 300.0):
        ref = _plain_forward(unet, x, t, ctx)
        assert torch.equal(unet(x, t, ctx), ref)
        assert torch.equal(unet(x, t, ctx, cache=cache), ref)
    assert cache.full_calls == cache.calls == 3


@pytest.mark.parametrize("depth", [1, 2, 3])
@torch.no_grad()
def test_partial_evaluation_reuses_the_deep_feature_exactly(depth: int) -> None:
    unet, (x, ctx) = _tiny(), _inputs()
    cache = DeepCache(interval=2, depth=depth)
    full = unet(x, 500.0, ctx, cache=cache)
    # the same input again: the shallow branch recomputed on the cached deep feature is the
    # full evaluation, bit for bit
    again = unet(x, 500.0, ctx, cache=cache)
    assert cache.full_calls == 1 and cache.calls == 2
    assert torch.equal(again, full)
    # a different input on a partial step differs from the exact evaluation, but not by much
    x2 = x + 0.05 * torch.randn_like(x)
    unet(x, 500.0, ctx, cache=cache)  # full (call 3)
    partial = unet(x2, 480.0, ctx, cache=cache)
    exact = unet(x2, 480.0, ctx)
    assert not torch.equal(partial, exact)
    assert (partial - exact).norm() < 0.5 * exact.norm()


@torch.no_grad()
def test_schedule_new_runs_and_shape_changes() -> None:
    unet, (x, ctx) = _tiny(), _inputs()
    cache = DeepCache(interval=3)
    for t in torch.linspace(900, 100, 7):  # full at evaluations 0, 3, 6
        unet(x, float(t), ctx, cache=cache)
    assert (cache.calls, cache.full_calls) == (7, 3)
    unet(x, 950.0, ctx, cache=cache)  # a higher timestep starts a new run: full
    assert cache.full_calls == 4
    unet(x[:1], 940.0, ctx[:1], cache=cache)  # another batch size: full
    assert cache.full_calls == 5


@torch.no_grad()
def test_sampling_through_a_denoiser_copy() -> None:
    unet = _tiny()
    denoiser = DiscreteDenoiser(unet, make_alphas_cumprod(), "eps")
    ctx = _inputs(1)[1]
    run = dict(sampler="dpmpp_2m", steps=6, seeds=[3], extra_args={"context": ctx})
    exact = sample(denoiser, (1, 4, 16, 16), **run)
    cache = DeepCache(interval=1, depth=1)
    cached = with_model(denoiser, CachedModel(unet, cache))
    assert denoiser.model is unet  # the original wrapper is untouched
    assert torch.equal(sample(cached, (1, 4, 16, 16), **run), exact)
    cache3 = DeepCache(interval=3, depth=1)
    fast = sample(with_model(denoiser, CachedModel(unet, cache3)), (1, 4, 16, 16), **run)
    assert cache3.full_calls == 2 and cache3.calls == 6
    assert torch.isfinite(fast).all() and not torch.equal(fast, exact)


def test_bad_settings() -> None:
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="cache interval"):
            DeepCache(interval=bad)
    with pytest.raises(ValueError, match="cache depth"):
        DeepCache(interval=2, depth=0)
    unet, (x, ctx) = _tiny(), _inputs()
    n = len(unet.input_blocks)
    with pytest.raises(ValueError, match=f"below the UNet's {n} input blocks"):
        unet(x, 500.0, ctx, cache=DeepCache(interval=2, depth=n))
    with pytest.raises(TypeError, match="no .model"):
        with_model(torch.nn.Identity(), unet)
