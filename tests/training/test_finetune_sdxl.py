"""task: finetune on a tiny random SDXL base: te1 / te2 LoRA names load in diffusers' SDXL
pipeline with equal outputs, and each training image's vector conditioning is built from the
crop actually taken (original size, crop top-left, target size)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from genmodels.adapters.kohya_names import kohya_unet_names
from genmodels.pipelines.conditioning import SDXLSizeConditioning, sdxl_vector
from genmodels.pipelines.loading import load_pipeline
from genmodels.training.finetune import FinetuneTrainer
from genmodels.training.finetune_config import LoRAConfig
from genmodels.training.finetune_export import save_kohya_lora
from genmodels.training.lora import build_lora_network, load_kohya_weights
from tests.training.finetune_helpers import finetune_config, image_folder, tiny_checkpoint

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")
pytest.importorskip("peft")


@pytest.fixture(scope="module")
def xl(tmp_path_factory) -> tuple[Path, dict]:
    return tiny_checkpoint(tmp_path_factory.mktemp("xl"), "sdxl-base")


def test_sdxl_lora_with_both_text_encoders_loads_in_diffusers(xl, tmp_path) -> None:
    init, refs = xl
    pipe = load_pipeline(init)
    net = build_lora_network(pipe.unet, pipe.text_encoder, "sdxl-base",
                             LoRAConfig(rank=4, text_encoder=True))  # fmt: skip
    assert {k.split("_text")[0] for k in net.adapters if k.startswith("lora_te")} == {
        "lora_te1", "lora_te2"}  # fmt: skip
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for a in net.adapters.values():
            a.lora_up.weight.copy_(torch.randn(a.lora_up.weight.shape, generator=gen) * 0.1)
    save_kohya_lora(tmp_path / "xl.safetensors", net, {}, "fp32")
    folder = init.parent / "diffusers"
    ref = diffusers.StableDiffusionXLPipeline(
        vae=diffusers.AutoencoderKL.from_pretrained(folder / "vae"),
        text_encoder=transformers.CLIPTextModel.from_pretrained(folder / "text_encoder"),
        text_encoder_2=transformers.CLIPTextModelWithProjection.from_pretrained(
            folder / "text_encoder_2"),
        tokenizer=None, tokenizer_2=None,
        unet=diffusers.UNet2DConditionModel.from_pretrained(folder / "unet"),
        scheduler=diffusers.EulerDiscreteScheduler(),
    )  # fmt: skip
    ref.load_lora_weights(tmp_path / "xl.safetensors")
    net.merge_into_bases()
    ids = pipe.text_encoder.tokenize(["a photo of a cat", "sks"])[1][:, 0]  # bigG's (2, 77)
    with torch.no_grad():
        ours = pipe.text_encoder.embedders[1].model(ids)
        theirs = ref.text_encoder_2(ids)
        torch.testing.assert_close(ours.text_embeds, theirs.text_embeds, atol=1e-4, rtol=1e-4)
        x, t = torch.randn(2, 4, 8, 8, generator=gen), torch.tensor([5.0, 900.0])
        ctx, pooled = torch.randn(2, 5, 80, generator=gen), torch.randn(2, 24, generator=gen)
        time_ids = torch.tensor([[64.0, 96, 3, 0, 64, 64]] * 2)
        emb = ref.unet.add_time_proj(time_ids.flatten()).reshape(2, -1)
        got = ref.unet(
            x,
            t,
            encoder_hidden_states=ctx,
            added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids},
        ).sample
        want = pipe.unet(x, t, context=ctx, y=torch.cat([pooled, emb], -1))
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_sdxl_lora_names_are_kohyas_and_load_back_either_way(xl, tmp_path) -> None:
    """SDXL UNet layers get kohya sd-scripts' LDM names (``lora_unet_input_blocks_...``); our
    generation side loads the file (strict) with the merged-weights output, and a file with
    the diffusers-path names of the same layers loads into the training network too."""
    init, _ = xl
    pipe = load_pipeline(init)
    net = build_lora_network(pipe.unet, pipe.text_encoder, "sdxl-base", LoRAConfig(rank=4))
    unet_names = [n for n in net.adapters if n.startswith("lora_unet_")]
    assert unet_names and all(
        n.startswith(("lora_unet_input_blocks_", "lora_unet_middle_block_",
                      "lora_unet_output_blocks_")) for n in unet_names
    )  # fmt: skip
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for a in net.adapters.values():
            a.lora_up.weight.copy_(torch.randn(a.lora_up.weight.shape, generator=gen) * 0.1)
    save_kohya_lora(tmp_path / "xl.safetensors", net, {}, "fp32")
    other = load_pipeline(init)
    other.load_lora(tmp_path / "xl.safetensors", strict=True)
    x, t = torch.randn(1, 4, 8, 8, generator=gen), torch.tensor([300.0])
    ctx, y = torch.randn(1, 5, 80, generator=gen), torch.randn(1, pipe.unet.config.adm_in_channels)
    net.merge_into_bases()
    with torch.no_grad():
        got, want = other.unet(x, t, context=ctx, y=y), pipe.unet(x, t, context=ctx, y=y)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    ldm = kohya_unet_names(pipe.unet, "sdxl-base", "ldm")
    diff = {v: kohya_unet_names(pipe.unet, "sdxl-base", "diffusers")[k] for k, v in ldm.items()}
    tensors = {}
    for key, value in load_file(tmp_path / "xl.safetensors").items():
        layer, _, rest = key.partition(".")
        tensors[f"{diff.get(layer, layer)}.{rest}"] = value
    assert any(k.startswith("lora_unet_down_blocks_") for k in tensors)
    again = load_pipeline(init)
    fresh = build_lora_network(again.unet, again.text_encoder, "sdxl-base", LoRAConfig(rank=4))
    load_kohya_weights(fresh, tensors, "xl-diffusers-names.safetensors", "sdxl-base")
    for name, adapter in fresh.adapters.items():
        assert torch.equal(adapter.lora_up.weight, net.adapters[name].lora_up.weight)


def test_sdxl_vector_conditioning_comes_from_each_crop(xl, tmp_path) -> None:
    init, _ = xl
    images = image_folder(tmp_path / "images", [(64, 64), (80, 64), (70, 90)], sub="cats")
    cfg = finetune_config(init, images, tmp_path / "run", data={"batch_size": 3},
                          buckets={"enabled": False}, steps=2)  # fmt: skip
    trainer = FinetuneTrainer(cfg)
    rows = [0, 1, 2]
    latents, crops = trainer._rows(rows, 0)
    # (h, w) before resizing; top-left in the image resized to cover 64 x 64 (90 -> 82 px)
    assert [c.original_size for c in crops] == [(64, 64), (64, 80), (90, 70)]
    assert [c.crop_top_left for c in crops] == [(0, 0), (0, 8), (9, 0)]
    cond = trainer._cond(rows, torch.zeros(3, dtype=torch.bool), crops, 0)
    context, pooled = trainer.text.batch([trainer.data.captions[i] for i in rows])
    for r, c in enumerate(crops):
        size = SDXLSizeConditioning(c.original_size, c.crop_top_left, (64, 64))
        want = sdxl_vector(pooled[r : r + 1], "sdxl-base", size, (64, 64))
        torch.testing.assert_close(cond["y"][r : r + 1], want)
    trainer.fit()
    assert (tmp_path / "run" / "model.safetensors").is_file()


def test_lora_init_continues_a_file_and_refuses_another_family(xl, tmp_path) -> None:
    init, _ = xl
    images = image_folder(tmp_path / "images", [(64, 64), (64, 64)])
    first = FinetuneTrainer(finetune_config(init, images, tmp_path / "a", steps=2))
    first.fit()
    lora = tmp_path / "a" / "model.safetensors"
    again = FinetuneTrainer(finetune_config(init, images, tmp_path / "b", lora={"init": str(lora)}))
    for name, adapter in again.lora.adapters.items():  # the fp16 file's values
        assert torch.equal(
            adapter.lora_up.weight, first.lora.adapters[name].lora_up.weight.half().float()
        )
    sd1, _ = tiny_checkpoint(tmp_path / "sd1", "sd1")
    cfg = finetune_config(sd1, images, tmp_path / "c", lora={"init": str(lora)})
    with pytest.raises(
        ValueError, match=r"model\.safetensors: .* LoRA layers do not exist in this sd1"
    ):
        FinetuneTrainer(cfg)
