"""kohya sd-scripts LoRA names of our layers (the names A1111, ComfyUI and diffusers'
``load_lora_weights`` read).

kohya names a layer by its module path in the *diffusers* model with '.' replaced by '_' and a
prefix per model part:

    lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q   UNet
    lora_te_text_model_encoder_layers_0_self_attn_q_proj                    SD 1.x / 2.x text
    lora_te1_... / lora_te2_...                                              SDXL CLIP-L / bigG

Our UNet keeps the LDM names (``input_blocks.1.1.transformer_blocks.0.attn1.to_q``), so a
UNet name goes LDM module path -> diffusers module path through the one LDM <-> diffusers key
conversion (``checkpoints/diffusers_unet.ldm_to_diffusers_unet``: block renumbering and the
ResBlock renames ``in_layers.2 -> conv1``, ``out_layers.3 -> conv2``, ``emb_layers.1 ->
time_emb_proj``, ``skip_connection -> conv_shortcut``). Our text encoders already use the HF
``CLIPTextModel`` module paths (``text_model.encoder.layers.N.self_attn.q_proj``), as kohya's.

This is the only place the training side knows kohya's naming; generation-side LoRA loading
(``adapters/kohya_names.py`` on the ``lora`` branch) does the reverse and the two are meant to
be unified.
"""

from __future__ import annotations

import torch

from genmodels.checkpoints.diffusers_unet import ldm_to_diffusers_unet
from genmodels.configs.unet import UNetConfig
from genmodels.models.family import ModelFamily

__all__ = ["UNET_PREFIX", "kohya_text_prefixes", "kohya_unet_names", "kohya_name"]

UNET_PREFIX = "lora_unet_"

# kohya's text-encoder prefixes by family, in our ``TextEncoder.embedders`` order (the SDXL
# refiner has only bigG, which diffusers' SDXL pipelines hold as ``text_encoder_2``)
_TEXT_PREFIXES: dict[str, tuple[str, ...]] = {
    "sd1": ("lora_te_",),
    "sd2": ("lora_te_",),
    "sdxl-base": ("lora_te1_", "lora_te2_"),
    "sdxl-refiner": ("lora_te2_",),
}


def kohya_name(prefix: str, module_path: str) -> str:
    """``prefix`` + the module path with '.' -> '_' (kohya ``LoRANetwork.create_modules``)."""
    return prefix + module_path.replace(".", "_")


def kohya_unet_names(ldm_paths: list[str], config: UNetConfig) -> dict[str, str]:
    """LDM UNet module paths (``input_blocks.1.1.proj_in``) -> kohya names."""
    placeholder = torch.empty(0)
    keys = [f"{path}.weight" for path in ldm_paths]
    converted = ldm_to_diffusers_unet(dict.fromkeys(keys, placeholder), config)
    # the conversion keeps the order of its input (one output key per input key)
    return {
        path: kohya_name(UNET_PREFIX, key.removesuffix(".weight"))
        for path, key in zip(ldm_paths, converted, strict=True)
    }


def kohya_text_prefixes(family: ModelFamily) -> tuple[str, ...]:
    """The kohya prefix of each of the family's text encoders, in embedder order."""
    if family not in _TEXT_PREFIXES:
        raise ValueError(f"no kohya text-encoder names for model family {family!r}")
    return _TEXT_PREFIXES[family]
