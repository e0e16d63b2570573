"""diffusers <-> LDM UNet key conversion and config translation (pure dict functions)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from genmodels.checkpoints.diffusers_unet import (
    diffusers_to_ldm_unet,
    ldm_to_diffusers_unet,
    unet_config_from_diffusers,
)
from genmodels.configs.unet import get_unet_config
from genmodels.models.unet import UNetModel

_DOWN_SD = ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"]
# The UNet configs shipped with the diffusers-format releases (values as published).
SD15 = dict(
    in_channels=4,
    out_channels=4,
    block_out_channels=[320, 640, 1280, 1280],
    down_block_types=_DOWN_SD,
    layers_per_block=2,
    attention_head_dim=8,
    cross_attention_dim=768,
)
SD21 = dict(
    SD15,
    attention_head_dim=[5, 10, 20, 20],
    cross_attention_dim=1024,
    use_linear_projection=True,
    upcast_attention=True,
)
SDXL = dict(
    SD15,
    block_out_channels=[320, 640, 1280],
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    attention_head_dim=[5, 10, 20],
    transformer_layers_per_block=[1, 2, 10],
    cross_attention_dim=2048,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)
SDXL_REFINER = dict(
    SDXL,
    block_out_channels=[384, 768, 1536, 1536],
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    attention_head_dim=[6, 12, 24, 24],
    transformer_layers_per_block=4,
    cross_attention_dim=1280,
    projection_class_embeddings_input_dim=2560,
)


@pytest.mark.parametrize(
    ("diffusers_config", "preset"),
    [
        (SD15, "sd1"),
        (dict(SD15, in_channels=9), "sd1-inpainting"),
        (SD21, "sd2"),
        (SDXL, "sdxl-base"),
        (SDXL_REFINER, "sdxl-refiner"),
    ],
)
def test_release_configs_translate_to_presets(diffusers_config: dict, preset: str) -> None:
    assert unet_config_from_diffusers(diffusers_config) == get_unet_config(preset)


def test_full_size_key_maps_are_bijective() -> None:
    """Every SD 1.x / XL key maps to a distinct diffusers key and back, without allocating."""
    for preset in ("sd1", "sdxl-base", "sdxl-refiner"):
        config = get_unet_config(preset)
        with torch.device("meta"):
            ldm = UNetModel(config).state_dict()
        diff = ldm_to_diffusers_unet(ldm, config)
        assert len(diff) == len(ldm)
        assert diffusers_to_ldm_unet(diff, config).keys() == ldm.keys()
    assert (
        diff["mid_block.attentions.0.transformer_blocks.3.attn1.to_q.weight"].shape == (1536,) * 2
    )
    assert "up_blocks.1.upsamplers.0.conv.weight" in diff
    assert "down_blocks.1.resnets.0.conv_shortcut.weight" in diff
    assert "add_embedding.linear_1.weight" in diff


def test_known_key_pairs() -> None:
    config = get_unet_config("sd1")
    names = [
        ("input_blocks.0.0.weight", "conv_in.weight"),
        ("time_embed.2.bias", "time_embedding.linear_2.bias"),
        ("input_blocks.4.0.skip_connection.weight", "down_blocks.1.resnets.0.conv_shortcut.weight"),
        ("input_blocks.3.0.op.weight", "down_blocks.0.downsamplers.0.conv.weight"),
        ("input_blocks.1.0.emb_layers.1.weight", "down_blocks.0.resnets.0.time_emb_proj.weight"),
        ("middle_block.2.out_layers.3.weight", "mid_block.resnets.1.conv2.weight"),
        ("output_blocks.2.1.conv.weight", "up_blocks.0.upsamplers.0.conv.weight"),
        ("output_blocks.5.2.conv.bias", "up_blocks.1.upsamplers.0.conv.bias"),
        ("output_blocks.11.1.proj_out.weight", "up_blocks.3.attentions.2.proj_out.weight"),
        ("out.0.weight", "conv_norm_out.weight"),
    ]
    ldm = {a: torch.tensor(float(i)) for i, (a, _) in enumerate(names)}
    diff = ldm_to_diffusers_unet(ldm, config)
    assert diff == {b: torch.tensor(float(i)) for i, (_, b) in enumerate(names)}
    assert diffusers_to_ldm_unet(diff, config) == ldm


def test_class_embedding_keys() -> None:
    config = dataclasses.replace(get_unet_config("tiny"), num_classes=10)
    diff = ldm_to_diffusers_unet({"label_emb.weight": torch.zeros(10, 128)}, config)
    assert list(diff) == ["class_embedding.weight"]


def test_bad_keys_and_configs() -> None:
    config = get_unet_config("sd1")
    with pytest.raises(ValueError, match="unexpected diffusers key 'foo.weight'"):
        diffusers_to_ldm_unet({"foo.weight": torch.zeros(1)}, config)
    with pytest.raises(ValueError, match="unexpected LDM key 'label_emb.0.0.weight'"):
        ldm_to_diffusers_unet({"label_emb.0.0.weight": torch.zeros(1)}, config)
    with pytest.raises(ValueError, match="norm_num_groups"):
        unet_config_from_diffusers(dict(SD15, norm_num_groups=16))
    with pytest.raises(ValueError, match="unequal head widths"):
        unet_config_from_diffusers(dict(SD15, attention_head_dim=[5, 5, 20, 20]))
    with pytest.raises(ValueError, match="resblock_updown"):
        ldm_to_diffusers_unet({}, dataclasses.replace(config, resblock_updown=True))
