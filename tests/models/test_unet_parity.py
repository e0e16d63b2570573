"""Parity of UNetModel with diffusers' UNet2DConditionModel (random weights, shrunk widths).

Each variant keeps the block structure of a Stable Diffusion release and shrinks the channels:
SD 1.x (conv proj, fixed head count), SD 2.x (linear proj, fixed head width, upcast attention) and
SDXL (no attention at level 0, transformer depth per level, ``text_time`` vector conditioning).
diffusers' weights go through OUR converter. For SDXL, diffusers builds its added embedding from
``text_embeds`` and ``time_ids``; the sgm ``y`` is the same vector: ``cat([text_embeds,
timestep_embedding(time_ids.flatten(), addition_time_embed_dim).reshape(B, -1)])``.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from genmodels.checkpoints.diffusers_unet import diffusers_to_ldm_unet, unet_config_from_diffusers
from genmodels.models.unet import UNetModel
from genmodels.nn.embeddings import timestep_embedding

diffusers = pytest.importorskip("diffusers")

_ATTN_DOWN, _ATTN_UP = "CrossAttnDownBlock2D", "CrossAttnUpBlock2D"
VARIANTS: dict[str, dict[str, Any]] = {
    "sd1": dict(
        block_out_channels=(32, 64, 64),
        down_block_types=(_ATTN_DOWN, _ATTN_DOWN, "DownBlock2D"),
        up_block_types=("UpBlock2D", _ATTN_UP, _ATTN_UP),
        attention_head_dim=2,  # diffusers' name for the head count in SD 1.x configs
        cross_attention_dim=24,
    ),
    "sd2": dict(
        block_out_channels=(32, 64, 64),
        down_block_types=(_ATTN_DOWN, _ATTN_DOWN, "DownBlock2D"),
        up_block_types=("UpBlock2D", _ATTN_UP, _ATTN_UP),
        attention_head_dim=(2, 4, 4),  # head width 16 everywhere ("64-channel heads" style)
        cross_attention_dim=24,
        use_linear_projection=True,
        upcast_attention=True,
    ),
    "sdxl": dict(
        block_out_channels=(32, 64, 96),
        down_block_types=("DownBlock2D", _ATTN_DOWN, _ATTN_DOWN),
        up_block_types=(_ATTN_UP, _ATTN_UP, "UpBlock2D"),
        attention_head_dim=(2, 4, 6),
        transformer_layers_per_block=(1, 2, 3),
        cross_attention_dim=32,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=16 + 6 * 8,
    ),
    "class-scale-shift": dict(
        block_out_channels=(32, 64),
        down_block_types=(_ATTN_DOWN, "DownBlock2D"),
        up_block_types=("UpBlock2D", _ATTN_UP),
        layers_per_block=1,
        attention_head_dim=2,
        cross_attention_dim=16,
        num_class_embeds=10,
        resnet_time_scale_shift="scale_shift",
        only_cross_attention=True,  # sgm's disable_self_attentions (attn1 attends to the context)
    ),
}


def _pair(name: str) -> tuple[torch.nn.Module, UNetModel]:
    torch.manual_seed(0)
    ref = diffusers.UNet2DConditionModel(sample_size=16, **VARIANTS[name]).eval()
    with torch.no_grad():  # perturb every parameter so that norms/biases are not at their init
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
    config = unet_config_from_diffusers(dict(ref.config))
    ours = UNetModel(config).eval()
    ours.load_state_dict(diffusers_to_ldm_unet(ref.state_dict(), config), strict=True)
    return ref, ours


def _inputs(name: str, config, size: tuple[int, int] = (16, 16)) -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, *size, generator=g)
    t = torch.tensor([3.0, 977.5])
    ctx = torch.randn(2, 7, config.context_dim, generator=g)
    ref_kw: dict[str, Any] = dict(sample=x, timestep=t, encoder_hidden_states=ctx)
    ours_kw: dict[str, Any] = dict(x=x, timesteps=t, context=ctx)
    if name == "sdxl":
        text_embeds = torch.randn(2, 16, generator=g)
        time_ids = torch.tensor([[1024.0, 1024, 0, 0, 1024, 1024], [512.0, 768, 16, 32, 1024, 832]])
        ref_kw["added_cond_kwargs"] = {"text_embeds": text_embeds, "time_ids": time_ids}
        time_embeds = timestep_embedding(time_ids.flatten(), 8).reshape(2, -1)  # (B, 6 * 8)
        ours_kw["y"] = torch.cat([text_embeds, time_embeds], dim=1)
    if name == "class-scale-shift":
        labels = torch.tensor([3, 7])
        ref_kw["class_labels"], ours_kw["y"] = labels, labels
    return ref_kw, ours_kw


@pytest.mark.parametrize("name", list(VARIANTS))
def test_matches_diffusers_fp32(name: str) -> None:
    ref, ours = _pair(name)
    ref_kw, ours_kw = _inputs(name, ours.config)
    with torch.no_grad():
        expected = ref(**ref_kw).sample
        actual = ours(**ours_kw)
    assert expected.abs().max() > 0.05  # a non-trivial output
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["sd1", "sdxl"])
@pytest.mark.parametrize("size", [(7, 9), (65, 65)], ids=["72x56", "520x520"])
def test_any_multiple_of_8_matches_diffusers(name: str, size: tuple[int, int]) -> None:
    """Latent sides not divisible by the UNet's 2^(levels-1): a 72x56 image (latent 9x7: the
    skips are 9x7, 5x4, 3x2) and 520x520 (65 -> 33 -> 17). Each Upsample interpolates to its
    skip's size as diffusers' ``upsample_size``."""
    ref, ours = _pair(name)
    ref_kw, ours_kw = _inputs(name, ours.config, size)
    with torch.no_grad():
        expected = ref(**ref_kw).sample
        actual = ours(**ours_kw)
    assert actual.shape == (2, 4, *size)
    assert expected.abs().max() > 0.05
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=0)


def test_sdxl_preset_structure_is_detected() -> None:
    _, ours = _pair("sdxl")
    c = ours.config
    assert c.attention_resolutions == (4, 2) and c.transformer_depth == (0, 2, 3)
    assert c.num_classes == "sequential" and c.adm_in_channels == 64
    assert "label_emb.0.0.weight" in ours.state_dict()
    assert "input_blocks.1.1.norm.weight" not in ours.state_dict()  # no attention at level 0


def test_bf16_close_to_fp32() -> None:
    ref, ours = _pair("sd2")
    ref_kw, ours_kw = _inputs("sd2", ours.config)
    with torch.no_grad():
        expected = ref(**ref_kw).sample
        actual = ours.to(torch.bfloat16)(**ours_kw)
    assert actual.dtype == torch.float32  # returned in the input's dtype
    assert (actual - expected).abs().max() < 0.05 * expected.abs().max()


def test_our_keys_load_through_diffusers_own_ldm_converter() -> None:
    """diffusers' converter for original (CompVis/sgm) checkpoints accepts our state dict."""
    single_file = pytest.importorskip("diffusers.loaders.single_file_utils")
    ref, ours = _pair("sdxl")
    ldm = {f"model.diffusion_model.{k}": v for k, v in ours.state_dict().items()}
    converted = single_file.convert_ldm_unet_checkpoint(ldm, dict(ref.config))
    ref_sd = ref.state_dict()
    assert set(converted) == set(ref_sd)
    for key, value in converted.items():
        assert torch.equal(value, ref_sd[key]), key
