"""UNetModel: presets and checkpoint key names, dtypes, gradient checkpointing, bad inputs."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from genmodels.configs.unet import UNET_PRESETS, UNetConfig, get_unet_config
from genmodels.models.unet import UNetModel
from genmodels.nn.attention import CrossAttention
from genmodels.nn.embeddings import timestep_embedding
from genmodels.nn.transformer import SpatialTransformer


def _tiny(**overrides) -> UNetModel:
    torch.manual_seed(0)
    model = UNetModel(dataclasses.replace(get_unet_config("tiny"), **overrides))
    with torch.no_grad():  # undo ldm's zero-init of the output convs so outputs are non-trivial
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model.eval()


def _inputs(b: int = 2, hw: int = 16) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(b, 4, hw, hw, generator=g)
    return x, torch.linspace(10.0, 900.0, b), torch.randn(b, 5, 32, generator=g)


# --- presets and key names -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "n_params", "n_keys"),
    [
        ("sd1", 859_520_964, 686),  # SD 1.x UNet size as published
        ("sd2", 865_910_724, 686),
        ("sdxl-base", 2_567_463_684, 1680),
        ("sdxl-refiner", 2_259_526_660, 1220),
    ],
)
def test_release_presets_sizes(name: str, n_params: int, n_keys: int) -> None:
    with torch.device("meta"):
        model = UNetModel(get_unet_config(name))
    assert sum(p.numel() for p in model.parameters()) == n_params
    assert len(model.state_dict()) == n_keys


def test_checkpoint_key_names() -> None:
    with torch.device("meta"):
        sd1 = UNetModel(get_unet_config("sd1")).state_dict()
        xl = UNetModel(get_unet_config("sdxl-base")).state_dict()
        inpaint = UNetModel(get_unet_config("sd1-inpainting")).state_dict()
    assert sd1["input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"].shape == (320, 320)
    assert sd1["input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"].shape == (320, 768)
    assert sd1["input_blocks.1.1.proj_in.weight"].shape == (320, 320, 1, 1)  # conv proj
    assert sd1["input_blocks.3.0.op.weight"].shape == (320, 320, 3, 3)
    assert sd1["input_blocks.4.0.skip_connection.weight"].shape == (640, 320, 1, 1)
    assert sd1["middle_block.1.proj_in.weight"].shape == (1280, 1280, 1, 1)
    assert sd1["output_blocks.2.1.conv.weight"].shape == (1280, 1280, 3, 3)
    assert sd1["output_blocks.5.2.conv.weight"].shape == (1280, 1280, 3, 3)
    assert sd1["time_embed.0.weight"].shape == (1280, 320)
    assert sd1["out.2.weight"].shape == (4, 320, 3, 3)
    assert sd1["input_blocks.1.1.transformer_blocks.0.ff.net.0.proj.weight"].shape == (2560, 320)
    assert xl["label_emb.0.0.weight"].shape == (1280, 2816)
    assert xl["middle_block.1.proj_in.weight"].shape == (1280, 1280)  # linear proj
    assert "middle_block.1.transformer_blocks.9.attn2.to_k.weight" in xl
    assert "input_blocks.1.1.norm.weight" not in xl  # no attention at the first level
    assert inpaint["input_blocks.0.0.weight"].shape == (320, 9, 3, 3)


def test_presets_lookup_and_prediction_type() -> None:
    assert get_unet_config("sd2-v").prediction_type == "v"
    assert get_unet_config("sd2").prediction_type == "eps"
    v_net = dataclasses.replace(get_unet_config("sd2-v"), prediction_type="eps")
    assert v_net == get_unet_config("sd2")  # same network
    with pytest.raises(ValueError, match="sdxl-base"):
        get_unet_config("sd3")
    assert {"sd1", "sd2", "sdxl-base", "sdxl-refiner", "sd1-inpainting", "tiny"} <= set(
        UNET_PRESETS
    )


def test_small_presets_forward() -> None:
    for name, y in (("small", None), ("small-class", torch.tensor([0, 9]))):
        model = UNetModel(get_unet_config(name)).eval()
        with torch.no_grad():
            out = model(torch.randn(2, 3, 16, 16), torch.tensor([1.0, 999.0]), y=y)
        assert out.shape == (2, 3, 16, 16)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (dict(num_heads=4), "exactly one of num_heads"),
        (dict(num_res_blocks=(1, 1, 1)), "num_res_blocks has 3 entries"),
        (dict(model_channels=48), "divisible by 32"),
        (dict(num_classes="sequential"), "adm_in_channels"),
        (dict(prediction_type="sample"), "prediction_type"),
    ],
)
def test_bad_config(overrides: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(get_unet_config("tiny"), **overrides)


# --- building blocks ---------------------------------------------------------------------------


def test_timestep_embedding_analytic() -> None:
    t = torch.tensor([0.0, 1.0, 250.5])
    emb = timestep_embedding(t, 7)
    assert emb.shape == (3, 7) and emb.dtype == torch.float32
    half = 3
    for i in range(half):
        freq = math.exp(-math.log(10000.0) * i / half)
        torch.testing.assert_close(emb[:, i], torch.cos(t * freq))  # cos first (ldm)
        torch.testing.assert_close(emb[:, half + i], torch.sin(t * freq))
    assert torch.all(emb[:, -1] == 0)  # odd dim padded with zeros
    with pytest.raises(ValueError, match=r"\(B,\)"):
        timestep_embedding(torch.zeros(2, 1), 8)


def test_attention_matches_explicit_softmax_and_upcast() -> None:
    torch.manual_seed(0)
    attn = CrossAttention(32, context_dim=24, heads=4, dim_head=8).eval()
    x, ctx = torch.randn(2, 10, 32), torch.randn(2, 6, 24)
    q, k, v = (
        t.view(2, -1, 4, 8).transpose(1, 2) for t in (attn.to_q(x), attn.to_k(ctx), attn.to_v(ctx))
    )
    w = (q @ k.transpose(-1, -2) / math.sqrt(8)).softmax(-1)  # (B, heads, T, S)
    expected = attn.to_out((w @ v).transpose(1, 2).reshape(2, 10, 32))
    torch.testing.assert_close(attn(x, ctx), expected, atol=1e-5, rtol=1e-5)
    attn.upcast = True
    out = attn.to(torch.bfloat16)(x.bfloat16(), ctx.bfloat16())
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected, atol=0.05, rtol=0.05)
    with pytest.raises(ValueError, match=r"\(B, S, 24\)"):
        attn(x.bfloat16(), x.bfloat16())


def test_spatial_transformer_keeps_memory_format() -> None:
    """A channels-last view leaking from the token reshape made later convs copy their weights."""
    for use_linear in (False, True):
        block = SpatialTransformer(32, 2, 16, context_dim=8, use_linear=use_linear).eval()
        x, ctx = torch.randn(1, 32, 4, 6), torch.randn(1, 3, 8)
        with torch.no_grad():
            assert block(x, ctx).is_contiguous()
            out = block(x.contiguous(memory_format=torch.channels_last), ctx)
        assert out.is_contiguous(memory_format=torch.channels_last)


# --- forward behaviour ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_close_to_fp32(dtype: torch.dtype) -> None:
    model = _tiny(upcast_attention=True)
    x, t, ctx = _inputs()
    with torch.no_grad():
        ref = model(x, t, ctx)
        out = model.to(dtype)(x.to(dtype), t, ctx.to(dtype))
    assert out.dtype == dtype and torch.isfinite(out).all()
    err = (out.float() - ref).abs().max() / ref.abs().max()
    assert err < (0.05 if dtype == torch.bfloat16 else 0.01)


def test_batch_independence_and_scalar_timestep() -> None:
    model = _tiny()
    x, t, ctx = _inputs(b=3)
    with torch.no_grad():
        full = model(x, t, ctx)
        single = model(x[1:2], t[1], ctx[1:2])  # a 0-d timestep is broadcast
    torch.testing.assert_close(single, full[1:2], atol=1e-5, rtol=1e-5)


def test_context_and_labels_change_the_output() -> None:
    model = _tiny(num_classes=5, use_scale_shift_norm=True, resblock_updown=True)
    x, t, ctx = _inputs()
    with torch.no_grad():
        a = model(x, t, ctx, torch.tensor([0, 1]))
        b = model(x, t, ctx, torch.tensor([2, 1]))
        c = model(x, t, ctx.flip(0), torch.tensor([0, 1]))
    assert not torch.allclose(a[0], b[0]) and torch.allclose(a[1], b[1])
    assert not torch.allclose(a, c)


def test_disable_self_attention_uses_context_in_attn1() -> None:
    model = _tiny(disable_self_attentions=(True, True), disable_middle_self_attn=True)
    assert model.input_blocks[3][1].transformer_blocks[0].attn1.to_k.weight.shape == (64, 32)
    x, t, ctx = _inputs()
    assert model(x, t, ctx).shape == x.shape


def _peak_bytes(model: UNetModel) -> tuple[int, list[torch.Tensor]]:
    """Peak CPU memory of one training step from the profiler's per-op allocation records."""
    x, t, ctx = _inputs(b=1, hw=32)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        model(x, t, ctx).square().mean().backward()
    current = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        current += event.self_cpu_memory_usage
        peak = max(peak, current)
    return peak, [p.grad for p in model.parameters()]


def test_gradient_checkpointing_lowers_peak_memory_same_grads() -> None:
    plain, plain_grads = _peak_bytes(_tiny().train())
    ckpt, ckpt_grads = _peak_bytes(_tiny(use_checkpoint=True).train())
    assert ckpt < 0.6 * plain, (ckpt, plain)
    for a, b in zip(plain_grads, ckpt_grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


# --- bad input ------------------------------------------------------------------------------------


def test_bad_inputs_name_expected_shapes() -> None:
    model = _tiny()
    x, t, ctx = _inputs()
    with pytest.raises(ValueError, match=r"x of shape \(B, 4, H, W\)"):
        model(torch.randn(2, 3, 16, 16), t, ctx)
    assert model(torch.randn(2, 4, 15, 16), t, ctx).shape == (2, 4, 15, 16)  # odd sides work
    with pytest.raises(ValueError, match=r"context of shape \(2, S, 32\)"):
        model(x, t, torch.randn(2, 5, 16))
    with pytest.raises(ValueError, match=r"context of shape \(2, S, 32\)"):
        model(x, t)
    with pytest.raises(ValueError, match=r"timesteps of shape \(2,\)"):
        model(x, torch.zeros(3), ctx)


def test_missing_y_names_expected_shape() -> None:
    xl = _tiny(num_classes="sequential", adm_in_channels=12)
    cls = _tiny(num_classes=10)
    x, t, ctx = _inputs()
    with pytest.raises(ValueError, match=r"y of shape \(2, 12\)"):
        xl(x, t, ctx)
    with pytest.raises(ValueError, match=r"y of shape \(2, 12\)"):
        xl(x, t, ctx, torch.randn(2, 11))
    with pytest.raises(ValueError, match=r"labels y of shape \(2,\)"):
        cls(x, t, ctx)
    assert xl(x, t, ctx, torch.randn(2, 12)).shape == x.shape


def test_unconditional_model_without_context() -> None:
    config: UNetConfig = dataclasses.replace(get_unet_config("tiny"), context_dim=None)
    model = UNetModel(config).eval()
    x, t, _ = _inputs()
    assert model(x, t).shape == x.shape
    with pytest.raises(ValueError, match="context_dim=None"):
        model(x, t, torch.randn(2, 5, 32))
    with pytest.raises(ValueError, match="num_classes=None"):
        model(x, t, y=torch.tensor([0, 1]))
