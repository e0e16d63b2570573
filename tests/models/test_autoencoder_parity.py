"""Parity with diffusers' AutoencoderKL (SD block structure, shrunk widths, random weights)."""

from __future__ import annotations

import pytest
import torch

from genmodels.checkpoints.diffusers_vae import (
    diffusers_vae_to_ldm,
    ldm_vae_attention_to_conv,
    ldm_vae_to_diffusers,
)
from genmodels.configs.autoencoder import get_autoencoder_config
from genmodels.models.autoencoder_kl import AutoencoderKL

diffusers = pytest.importorskip("diffusers")

WIDTHS = (32, 64, 64, 64)  # SD: (128, 256, 512, 512)


@pytest.fixture(scope="module")
def pair() -> tuple[torch.nn.Module, AutoencoderKL]:
    torch.manual_seed(0)
    ref = diffusers.AutoencoderKL(
        block_out_channels=WIDTHS,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        norm_num_groups=32,
        latent_channels=4,
    ).eval()
    with torch.no_grad():  # perturb so biases / norm affines are not at their init values
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ours = AutoencoderKL(get_autoencoder_config("sd", ch=32, ch_mult=(1, 2, 2, 2))).eval()
    ours.load_state_dict(diffusers_vae_to_ldm(ref.state_dict()), strict=True)
    return ref, ours


def test_encode_decode_match_diffusers(pair) -> None:
    ref, ours = pair
    x = torch.randn(2, 3, 32, 48)
    z = torch.randn(2, 4, 4, 6)
    with torch.no_grad():
        dist_ref, dist = ref.encode(x).latent_dist, ours.encode(x)
        torch.testing.assert_close(dist.mean, dist_ref.mean, atol=1e-4, rtol=0)
        torch.testing.assert_close(dist.logvar, dist_ref.logvar, atol=1e-4, rtol=0)
        torch.testing.assert_close(ours.decode(z), ref.decode(z).sample, atol=1e-4, rtol=0)
        torch.testing.assert_close(dist.kl(), dist_ref.kl(), rtol=1e-5, atol=1e-3)
        sample = dist.sample(torch.Generator().manual_seed(1))
        torch.testing.assert_close(dist.nll(sample), dist_ref.nll(sample), rtol=1e-5, atol=1e-3)
        g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
        torch.testing.assert_close(dist.sample(g1), dist_ref.sample(g2), atol=1e-4, rtol=0)


def test_any_multiple_of_8_matches_diffusers(pair) -> None:
    """72x56 pixels <-> a 9x7 latent: every VAE level has whole pixels at multiples of 8."""
    ref, ours = pair
    x = torch.randn(1, 3, 56, 72)
    z = torch.randn(1, 4, 7, 9)
    with torch.no_grad():
        mean = ours.encode(x).mean
        assert mean.shape == (1, 4, 7, 9)
        torch.testing.assert_close(mean, ref.encode(x).latent_dist.mean, atol=1e-4, rtol=0)
        out = ours.decode(z)
        assert out.shape == (1, 3, 56, 72)
        torch.testing.assert_close(out, ref.decode(z).sample, atol=1e-4, rtol=0)


def test_round_trip_and_diffusers_single_file_converter(pair) -> None:
    ref, ours = pair
    back = ldm_vae_to_diffusers(ours.state_dict())
    assert back.keys() == ref.state_dict().keys()
    for key, value in ref.state_dict().items():
        assert torch.equal(back[key], value), key
    # diffusers' own ldm -> diffusers converter accepts our names: they are the ldm names
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    prefixed = {f"first_stage_model.{k}": v for k, v in ours.state_dict().items()}
    converted = convert_ldm_vae_checkpoint(prefixed, dict(ref.config))
    fresh = diffusers.AutoencoderKL(**ref.config)
    fresh.load_state_dict(converted, strict=True)
    for key, value in ref.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[key], value, rtol=0, atol=0)


def test_legacy_attention_names_and_linear_attention_weights(pair) -> None:
    ref, ours = pair
    legacy = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    old = {}
    for key, value in ref.state_dict().items():
        for new_name, old_name in legacy.items():
            key = key.replace(f"attentions.0.{new_name}.", f"attentions.0.{old_name}.")
        old[key] = value
    converted = diffusers_vae_to_ldm(old)
    for key, value in ours.state_dict().items():
        assert torch.equal(converted[key], value), key
    # an ldm-named file with Linear-shaped (C, C) attention weights (diffusers-style export)
    flat = {
        k: v[:, :, 0, 0] if ".attn_1." in k and v.ndim == 4 else v
        for k, v in ours.state_dict().items()
    }
    AutoencoderKL(ours.config).load_state_dict(ldm_vae_attention_to_conv(flat), strict=True)


def test_converter_rejects_unknown_keys(pair) -> None:
    ref, _ = pair
    bad = dict(ref.state_dict())
    bad["decoder.mystery.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="decoder.mystery.weight"):
        diffusers_vae_to_ldm(bad)
    with pytest.raises(ValueError, match="decoder level"):
        diffusers_vae_to_ldm({"quant_conv.weight": torch.zeros(1)})
