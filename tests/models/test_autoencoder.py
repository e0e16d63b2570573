"""Encoder, Decoder, AutoencoderKL: layout, posterior maths, precision, checkpointing, errors."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from genmodels.configs.autoencoder import AutoencoderConfig, get_autoencoder_config
from genmodels.models.autoencoder import Decoder, Encoder
from genmodels.models.autoencoder_kl import AutoencoderKL
from genmodels.models.distributions import DiagonalGaussianDistribution


def _model(name: str = "tiny", seed: int = 0, **overrides) -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL(get_autoencoder_config(name, **overrides)).eval()


def test_sd_preset_matches_original_checkpoint_layout() -> None:
    with torch.device("meta"):
        model = AutoencoderKL(get_autoencoder_config("sd"))
    sd = model.state_dict()
    assert sum(v.numel() for v in sd.values()) == 83_653_863  # SD 1.x VAE parameter count
    expected = {
        "encoder.conv_in.weight": (128, 3, 3, 3),
        "encoder.down.0.block.0.norm1.weight": (128,),
        "encoder.down.1.block.0.nin_shortcut.weight": (256, 128, 1, 1),
        "encoder.down.2.downsample.conv.weight": (512, 512, 3, 3),
        "encoder.mid.attn_1.q.weight": (512, 512, 1, 1),
        "encoder.mid.attn_1.proj_out.weight": (512, 512, 1, 1),
        "encoder.conv_out.weight": (8, 512, 3, 3),
        "quant_conv.weight": (8, 8, 1, 1),
        "post_quant_conv.weight": (4, 4, 1, 1),
        "decoder.conv_in.weight": (512, 4, 3, 3),
        "decoder.up.3.upsample.conv.weight": (512, 512, 3, 3),
        "decoder.up.0.block.2.conv2.weight": (128, 128, 3, 3),
        "decoder.up.1.block.0.nin_shortcut.weight": (256, 512, 1, 1),
        "decoder.norm_out.weight": (128,),
    }
    for key, shape in expected.items():
        assert tuple(sd[key].shape) == shape, key
    assert "encoder.down.3.downsample.conv.weight" not in sd
    assert "decoder.up.0.upsample.conv.weight" not in sd
    sdxl = get_autoencoder_config("sdxl")
    assert sdxl.scale_factor == 0.13025 and sdxl.force_upcast
    assert replace(sdxl, scale_factor=0.18215, force_upcast=False) == get_autoencoder_config("sd")


@pytest.mark.parametrize("name,factor", [("tiny", 4), ("small", 8)])
def test_shapes_and_factor(name: str, factor: int) -> None:
    model = _model(name)
    assert model.downsample_factor == factor
    x = torch.randn(2, 3, 8 * factor, 4 * factor)
    with torch.no_grad():
        posterior = model.encode(x)
        assert posterior.mean.shape == (2, 4, 8, 4)
        assert model.decode(posterior.mode()).shape == x.shape
        rec, post = model(x, sample_posterior=False)
    torch.testing.assert_close(rec, model.decode(post.mean))


def test_posterior_matches_analytic_gaussian() -> None:
    torch.manual_seed(1)
    params = torch.randn(3, 8, 5, 5)
    post = DiagonalGaussianDistribution(params)
    normal = torch.distributions.Normal(post.mean, post.std)
    std_normal = torch.distributions.Normal(torch.zeros_like(post.mean), torch.ones_like(post.std))
    kl_ref = torch.distributions.kl_divergence(normal, std_normal).sum(dim=(1, 2, 3))
    torch.testing.assert_close(post.kl(), kl_ref)
    other = DiagonalGaussianDistribution(torch.randn(3, 8, 5, 5))
    kl_other = torch.distributions.kl_divergence(
        normal, torch.distributions.Normal(other.mean, other.std)
    )
    torch.testing.assert_close(post.kl(other), kl_other.sum(dim=(1, 2, 3)))
    sample = torch.randn(3, 4, 5, 5)
    torch.testing.assert_close(post.nll(sample), -normal.log_prob(sample).sum(dim=(1, 2, 3)))
    # reparameterised sample is reproducible from a generator and has the right statistics
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    torch.testing.assert_close(post.sample(g1), post.sample(g2))
    wide = DiagonalGaussianDistribution(
        torch.cat(
            [torch.full((1, 1, 200, 200), 2.0), torch.full((1, 1, 200, 200), math.log(0.25))], 1
        )
    )
    s = wide.sample(torch.Generator().manual_seed(0))
    assert abs(s.mean().item() - 2.0) < 0.01 and abs(s.std().item() - 0.5) < 0.01


def test_logvar_clamp_and_deterministic() -> None:
    params = torch.cat(
        [
            torch.zeros(1, 2, 2, 2),
            torch.tensor([-100.0, 100.0]).view(1, 2, 1, 1).expand(1, 2, 2, 2),
        ],
        1,
    )
    post = DiagonalGaussianDistribution(params)
    assert post.logvar[0, 0].eq(-30).all() and post.logvar[0, 1].eq(20).all()
    det = DiagonalGaussianDistribution(params, deterministic=True)
    assert torch.equal(det.sample(), det.mode()) and det.kl().eq(0).all()
    with pytest.raises(ValueError, match="2\\*C"):
        DiagonalGaussianDistribution(torch.zeros(1, 3, 2, 2))


def test_latent_scale_and_shift() -> None:
    model = _model(scale_factor=0.5, shift_factor=0.1)
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        z = model.encode_latents(x, sample=False)
        torch.testing.assert_close(z, 0.5 * (model.encode(x).mode() - 0.1))
        torch.testing.assert_close(model.decode_latents(z), model.decode(z / 0.5 + 0.1))
        g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
        torch.testing.assert_close(model.encode_latents(x, g1), model.encode_latents(x, g2))


def test_bad_inputs_name_expected_shape() -> None:
    model = _model()
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\).*divisible by 4"):
        model.encode(torch.randn(1, 4, 16, 16))
    with pytest.raises(ValueError, match="divisible by 4"):
        model.encode(torch.randn(1, 3, 18, 16))
    with pytest.raises(ValueError, match=r"\(B, 4, h, w\)"):
        model.decode(torch.randn(1, 3, 4, 4))
    with pytest.raises(ValueError, match=r"\(B, 4, h, w\)"):
        model.decoder(torch.randn(1, 4, 4))
    with pytest.raises(ValueError, match="num_groups"):
        AutoencoderConfig(ch=24, ch_mult=(1, 2))
    with pytest.raises(ValueError, match="valid"):
        get_autoencoder_config("sd3")
    with pytest.raises(ValueError, match="attn_type"):
        AutoencoderKL(AutoencoderConfig(ch=32, ch_mult=(1, 2), attn_type="linear"))
    with pytest.raises(ValueError, match="num_res_blocks"):
        Encoder(ch=32, num_res_blocks=0, in_channels=3, resolution=32, z_channels=4)


def test_attention_resolutions_attn_none_and_decoder_options() -> None:
    cfg = dict(ch=32, ch_mult=(1, 2), num_res_blocks=1, resolution=16, z_channels=4)
    enc = Encoder(**cfg, in_channels=3, attn_resolutions=(8,))
    assert (
        "down.1.attn.0.q.weight" in enc.state_dict()
        and "down.0.attn.0.q.weight" not in enc.state_dict()
    )
    dec = Decoder(**cfg, out_ch=3, attn_type="none")
    assert not any("attn" in k for k in dec.state_dict())
    z = torch.randn(1, 4, 4, 4)
    pre = Decoder(**cfg, out_ch=3, give_pre_end=True)
    tanh = Decoder(**cfg, out_ch=3, tanh_out=True)
    tanh.load_state_dict(pre.state_dict())
    with torch.no_grad():
        assert pre(z).shape == (1, 32, 8, 8)
        out = tanh(z)
        assert out.abs().max() < 1 and out.shape == (1, 3, 8, 8)


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 0.02), (torch.bfloat16, 0.1)])
def test_reduced_precision_decode_and_encode(dtype: torch.dtype, tol: float) -> None:
    model = _model(attn_resolutions=(8,))
    z, x = torch.randn(1, 4, 4, 4), torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        ref_img, ref_mean = model.decode(z), model.encode(x).mean
        low = _model(attn_resolutions=(8,)).to(dtype)
        low.load_state_dict(model.state_dict())
        img, mean = low.decode(z.to(dtype)), low.encode(x.to(dtype)).mean
    assert img.dtype == dtype and torch.isfinite(img).all() and torch.isfinite(mean).all()
    assert (img.float() - ref_img).abs().max() < tol * ref_img.abs().max()
    assert (mean.float() - ref_mean).abs().max() < tol * ref_mean.abs().max()


def test_force_upcast_avoids_fp16_overflow() -> None:
    model = _model()
    with torch.no_grad():  # blow activations past the fp16 range (65504), like the SD-XL VAE
        model.decoder.conv_in.weight.mul_(1e4)
        model.decoder.conv_in.bias.add_(6e4)
    z = torch.randn(1, 4, 4, 4)
    with torch.no_grad():
        ref = model.decode(z)
        half = _model().half()
        half.load_state_dict(model.state_dict())
        assert not torch.isfinite(half.decode(z.half())).all()
        upcast = AutoencoderKL(replace(model.config, force_upcast=True)).half()
        upcast.load_state_dict(model.state_dict())
        out = upcast.decode(z.half())
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), ref, atol=2e-2 * ref.abs().max().item(), rtol=0)
    assert all(p.dtype == torch.float16 for p in upcast.parameters())  # weights restored


def _saved_bytes(model: AutoencoderKL, x: torch.Tensor) -> tuple[int, dict[str, torch.Tensor]]:
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    model.zero_grad()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        rec, post = model(x, sample_posterior=False)
        loss = rec.square().mean() + post.kl().mean()
    loss.backward()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    total = sum(n for ptr, n in seen.items() if ptr not in params)
    return total, {k: p.grad.clone() for k, p in model.named_parameters()}


def test_gradient_checkpointing_lowers_saved_activations() -> None:
    model = _model(attn_resolutions=(16,)).train()
    x = torch.randn(1, 3, 32, 32)
    plain_bytes, plain_grads = _saved_bytes(model, x)
    model.set_gradient_checkpointing(True)
    ckpt_bytes, ckpt_grads = _saved_bytes(model, x)
    assert ckpt_bytes < 0.5 * plain_bytes, (ckpt_bytes, plain_bytes)
    for key, grad in plain_grads.items():
        torch.testing.assert_close(ckpt_grads[key], grad, rtol=1e-4, atol=1e-6)
