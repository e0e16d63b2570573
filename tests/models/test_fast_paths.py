"""Fast inference paths (``genmodels.nn.fast``) give the plain path's results.

The 1x1-conv-as-matmul token path of the SpatialTransformer and the in-place residual adds /
SiLUs of inference must match the plain PyTorch path (within bf16 rounding), leave fp32 and
autograd untouched, and keep the checkpoint parameter names.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from genmodels.configs.autoencoder import get_autoencoder_config
from genmodels.configs.unet import get_unet_config
from genmodels.models.autoencoder_kl import AutoencoderKL
from genmodels.models.unet import UNetModel
from genmodels.nn import fast
from genmodels.nn.transformer import SpatialTransformer

BF16 = torch.bfloat16


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float(), b.float()
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture
def plain():
    """Run the body with the fast paths off, restoring them afterwards."""
    fast.set_fast_paths(False)
    yield
    fast.set_fast_paths(True)


def _tiny_unet(**overrides) -> UNetModel:
    torch.manual_seed(0)
    model = UNetModel(dataclasses.replace(get_unet_config("tiny"), **overrides))
    with torch.no_grad():  # undo the zero-init of output layers so every branch contributes
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def _unet_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 16, 16, generator=g)
    return x, torch.tensor([10.0, 700.0]), torch.randn(2, 7, 32, generator=g)


def test_eligibility() -> None:
    w = torch.randn(4, 4).to(BF16)
    x = torch.randn(1, 4, 2, 2).to(BF16)
    assert not fast.fast_bf16_inference(x, w)  # not channels-last
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert fast.fast_bf16_inference(x, w)
        assert not fast.fast_bf16_inference(x.float(), w)  # fp32 keeps the reference path
        fast.set_fast_paths(False)
        assert not fast.fast_bf16_inference(x, w) and not fast.fast_paths_enabled()
        fast.set_fast_paths(True)
    assert not fast.fast_bf16_inference(x, w.requires_grad_())  # autograd graph recorded


def test_fast_modules_keep_checkpoint_names() -> None:
    st = SpatialTransformer(32, 2, 16, context_dim=8)
    assert "transformer_blocks.0.attn1.to_q.weight" in st.state_dict()
    assert "proj_in.weight" in st.state_dict() and st.proj_in.weight.ndim == 4  # still a conv


def test_spatial_transformer_token_path_matches_conv_path(plain: None) -> None:
    torch.manual_seed(0)
    st = SpatialTransformer(32, 2, 16, context_dim=8).eval()
    with torch.no_grad():
        st.proj_out.weight.normal_(0.0, 0.05)  # undo zero-init
    st = st.to(BF16, memory_format=torch.channels_last)
    x = torch.randn(2, 32, 8, 8).to(BF16).contiguous(memory_format=torch.channels_last)
    ctx = torch.randn(2, 5, 8).to(BF16)
    with torch.inference_mode():
        ref = st(x, ctx)
        fast.set_fast_paths(True)
        assert st._tokens_fast_path(x)
        out = st(x, ctx)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert _rel(out - x, ref - x) < 2e-2  # the transformer branch, not the residual


@pytest.mark.parametrize("use_linear", [True, False])
def test_unet_inplace_inference_is_exact_in_fp32(use_linear: bool) -> None:
    model = _tiny_unet(use_linear_in_transformer=use_linear)
    x, t, ctx = _unet_inputs()
    with torch.enable_grad():
        ref = model(x, t, ctx)  # out-of-place residual adds
    with torch.inference_mode():
        out = model(x, t, ctx)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


@pytest.mark.parametrize("use_linear", [True, False])
def test_unet_bf16_fast_matches_plain_and_fp32(plain: None, use_linear: bool) -> None:
    model = _tiny_unet(use_linear_in_transformer=use_linear)
    x, t, ctx = _unet_inputs()
    with torch.inference_mode():
        ref32 = model(x, t, ctx)
        model.to(BF16, memory_format=torch.channels_last)
        xb = x.contiguous(memory_format=torch.channels_last)
        ref16 = model(xb, t, ctx)
        fast.set_fast_paths(True)
        out = model(xb, t, ctx)
    assert out.dtype == torch.float32 and out.shape == x.shape
    # bf16 rounding alone puts this tiny random model ~1.5% (RMS) from fp32; the fast path must
    # add no error of its own.
    assert _rel(out, ref16) < 2e-2
    assert _rel(out, ref32) <= 1.05 * _rel(ref16, ref32) < 2e-2


def test_autoencoder_inplace_inference_is_exact() -> None:
    torch.manual_seed(0)
    vae = AutoencoderKL(get_autoencoder_config("tiny", attn_resolutions=(8,))).eval()
    x = torch.randn(1, 3, 16, 16)
    with torch.enable_grad():
        post = vae.encode(x)
        ref_z, ref_img = post.mean, vae.decode(post.mean)  # out-of-place silu / residual adds
    with torch.inference_mode():
        z = vae.encode(x).mean
        img = vae.decode(z)
    # (SDPA may pick another fp32 kernel when a graph is recorded: ~1e-7 differences)
    torch.testing.assert_close(z, ref_z, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(img, ref_img, rtol=1e-5, atol=1e-5)
    assert not torch.equal(x, torch.zeros_like(x))  # the input is left untouched
