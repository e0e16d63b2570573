"""Tiled encode / decode: tile grid, blending, GroupNorm statistics, equality with untiled."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from genmodels.configs.autoencoder import AutoencoderConfig
from genmodels.models.autoencoder_kl import AutoencoderKL
from genmodels.models.tiling import TilingConfig, tile_starts, tiled_forward
from genmodels.nn.normalization import GroupNorm32

# Narrow f2 autoencoder without attention (cheap on CPU): decoder receptive radius 12 latents
# (conv_in 1, mid 4, 2 res blocks at h 4, upsample 0.5, 2 res blocks at 2h 2, conv_out 0.5).
F2 = AutoencoderConfig(
    ch=8, ch_mult=(1, 2), num_res_blocks=1, resolution=32, attn_type="none", num_groups=4
)


def _f2(**overrides) -> AutoencoderKL:
    torch.manual_seed(0)
    return AutoencoderKL(replace(F2, **overrides)).eval()


def test_tile_starts_cover_and_align() -> None:
    assert tile_starts(10, 16, 4) == [0]
    assert tile_starts(64, 24, 8) == [0, 16, 32, 40]
    starts = tile_starts(96, 32, 12, align=8)
    assert starts == [0, 16, 32, 48, 64] and all(s % 8 == 0 for s in starts)
    for length, tile, overlap in [(100, 30, 7), (64, 64, 8), (65, 20, 19)]:
        starts = tile_starts(length, tile, overlap)
        assert starts[0] == 0 and starts[-1] + tile == length
        assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))


def test_tiled_forward_exact_for_local_maps() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 40, 56)
    # identity and nearest upsampling: blending a partition of unity must reproduce them exactly
    out = tiled_forward(lambda t: t, x, tile=16, overlap=6)
    torch.testing.assert_close(out, x)
    up = nn.Upsample(scale_factor=2.0, mode="nearest")
    torch.testing.assert_close(tiled_forward(up, x, tile=16, overlap=6), up(x))
    # conv + GroupNorm + upsample + conv: receptive radius 1.5 input pixels -> context 2 is exact
    # with global statistics; per-tile statistics are not.
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        GroupNorm32(8, num_groups=4, eps=1e-6),
        nn.SiLU(),
        up,
        nn.Conv2d(8, 5, 3, padding=1),
    ).eval()
    with torch.no_grad():
        ref = net(x)
    out = tiled_forward(net, x, tile=16, overlap=4, context=2, norm_module=net)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    local = tiled_forward(net, x, tile=16, overlap=4, context=2)
    assert (local - ref).abs().max() > 1e-2
    # encoder-like map (f=4): tiles aligned to the factor
    pool = nn.AvgPool2d(4)
    torch.testing.assert_close(tiled_forward(pool, x, tile=16, overlap=8, align=4), pool(x))
    with pytest.raises(ValueError, match="divisible by 4"):
        tiled_forward(pool, x, tile=18, overlap=8, align=4)


def test_tiled_decode_equals_untiled_with_context_and_global_stats() -> None:
    model = _f2()
    z = torch.randn(1, 4, 64, 64)
    shapes: list[tuple[int, ...]] = []
    model.decoder.register_forward_pre_hook(lambda m, args: shapes.append(tuple(args[0].shape)))
    tiles = dict(tile_size=80, overlap=32)  # 40 latents, starts (0, 24) per axis
    with torch.no_grad():
        ref = model.decode(z, tiled=False)
        shapes.clear()
        model.tiling = TilingConfig(**tiles, context=24, norm_stats="global")
        exact = model.decode(z, tiled=True)
        # one statistics pass on the whole latent, then 4 tiles of at most tile + context
        assert shapes[0][-2:] == (64, 64) and len(shapes) == 1 + 4
        assert max(max(s[-2:]) for s in shapes[1:]) == 40 + 12
        model.tiling = TilingConfig(**tiles, context=0, norm_stats="global")
        ramp_only = model.decode(z, tiled=True)
        model.tiling = TilingConfig(**tiles, context=24, norm_stats="tile")
        per_tile = model.decode(z, tiled=True)
    assert exact.shape == ref.shape == (1, 3, 128, 128)
    torch.testing.assert_close(exact, ref, atol=1e-4, rtol=0)
    # without context only pixels within the receptive radius of a tile border differ
    err = (ramp_only - ref).abs()
    assert err.max() > 1e-2 and err[..., :20, :20].max() < 1e-4
    # per-tile GroupNorm statistics shift every pixel, far from borders too
    assert (per_tile - ref)[..., :20, :20].abs().max() > 1e-2


def test_tiled_encode_matches_untiled() -> None:
    model = _f2()
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        ref = model.encode(x, tiled=False)
        model.tiling = TilingConfig(tile_size=64, overlap=16, context=32, norm_stats="global")
        tiled = model.encode(x, tiled=True)
    torch.testing.assert_close(tiled.mean, ref.mean, atol=1e-4, rtol=0)
    torch.testing.assert_close(tiled.logvar, ref.logvar, atol=1e-4, rtol=0)


def test_attention_model_and_downscaled_statistics() -> None:
    model = _f2(attn_type="vanilla")
    z = F.interpolate(torch.randn(1, 4, 8, 8), size=(64, 64), mode="bicubic")  # smooth latent
    shapes: list[tuple[int, ...]] = []
    model.decoder.register_forward_pre_hook(lambda m, args: shapes.append(tuple(args[0].shape)))
    with torch.no_grad():
        ref = model.decode(z, tiled=False)
        model.tiling = TilingConfig(tile_size=80, overlap=32, context=24, norm_stats="global")
        out = model.decode(z, tiled=True)
        shapes.clear()
        model.tiling = TilingConfig(tile_size=80, overlap=32, stats_size=64, norm_stats="global")
        estimate = model.decode(z, tiled=True)
    # the mid attention sees one tile plus context only: close, not equal
    rel = (out - ref).abs().mean() / ref.abs().mean()
    assert 1e-4 < rel < 0.1, rel
    # a statistics pass on a downscaled latent (64 px -> 32 latents) keeps memory bounded
    assert shapes[0][-2:] == (32, 32) and torch.isfinite(estimate).all()


def test_automatic_tiling_threshold_and_bad_settings() -> None:
    model = _f2()
    calls: list[int] = []
    model.decoder.register_forward_pre_hook(lambda m, args: calls.append(args[0].shape[-1]))
    model.tiling = TilingConfig(tile_size=32, overlap=8, context=0, min_size=64)
    with torch.no_grad():
        model.decode(torch.randn(1, 4, 32, 32))  # 64 px: not above the threshold
        assert len(calls) == 1
        model.decode(torch.randn(1, 4, 40, 40))  # 80 px: tiled, 3x3 tiles of 16 latents
        assert calls[1:] == [16] * 9
    with pytest.raises(ValueError, match="overlap"):
        TilingConfig(tile_size=32, overlap=32)
    with pytest.raises(ValueError, match="norm_stats"):
        TilingConfig(norm_stats="batch")


def test_one_group_norm_for_unet_and_autoencoder() -> None:
    from genmodels.models.autoencoder_blocks import Normalize
    from genmodels.nn.normalization import normalization

    ae, unet = Normalize(64), normalization(64)
    assert type(ae) is type(unet) is GroupNorm32
    assert (ae.num_groups, ae.num_channels, ae.eps) == (32, 64, 1e-6)
    assert (unet.num_groups, unet.num_channels, unet.eps) == (32, 64, 1e-5)
    with pytest.raises(TypeError):  # torch's (num_groups, num_channels) order is refused
        GroupNorm32(4, 8)  # type: ignore[misc]
    with pytest.raises(ValueError, match="divisible"):
        GroupNorm32(30)
