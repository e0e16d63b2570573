"""VQModel: taming's key layout, strict loading, encode/decode/decode_code, quantiser choice."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from genmodels.checkpoints.taming import load_taming_vq
from genmodels.configs.vqgan import IMAGENET_F16_1024, TINY, VQConfig, get_vqgan_config
from genmodels.models.vqgan import VQModel

# Keys of taming's VQModel state dict (vqgan_imagenet_f16_1024 layout), written out by hand.
TAMING_KEYS = [
    "encoder.conv_in.weight",
    "encoder.down.0.block.0.norm1.weight",
    "encoder.down.0.block.1.conv2.bias",
    "encoder.down.0.downsample.conv.weight",
    "encoder.down.2.block.0.nin_shortcut.weight",
    "encoder.down.4.attn.1.proj_out.weight",
    "encoder.mid.attn_1.q.weight",
    "encoder.norm_out.weight",
    "encoder.conv_out.weight",
    "decoder.conv_in.weight",
    "decoder.mid.block_2.conv1.weight",
    "decoder.up.4.attn.2.k.weight",
    "decoder.up.4.block.2.norm2.bias",
    "decoder.up.1.upsample.conv.weight",
    "decoder.conv_out.bias",
    "quantize.embedding.weight",
    "quant_conv.weight",
    "quant_conv.bias",
    "post_quant_conv.weight",
    "post_quant_conv.bias",
]


def test_imagenet_preset_has_taming_keys_and_shapes() -> None:
    # taming's layout at a quarter of the width (the full 72M-parameter model is slow to build)
    model = VQModel(replace(IMAGENET_F16_1024, ch=32))
    sd = model.state_dict()
    for key in TAMING_KEYS:
        assert key in sd, key
    assert tuple(sd["quantize.embedding.weight"].shape) == (1024, 256)
    assert tuple(sd["quant_conv.weight"].shape) == (256, 256, 1, 1)
    assert tuple(sd["encoder.conv_out.weight"].shape) == (256, 128, 3, 3)  # double_z=False
    assert "encoder.down.4.downsample.conv.weight" not in sd
    assert IMAGENET_F16_1024.downsample_factor == 16
    assert model.quantize.legacy and model.quantize.beta == 0.25  # taming's released behaviour
    assert not VQModel(TINY).quantize.legacy and not VQConfig().legacy  # beta on commitment


def _taming_state_dict(cfg: VQConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights in taming's layout, with the training-only ``loss.*`` entries."""
    g = torch.Generator().manual_seed(seed)
    sd = {k: torch.randn(v.shape, generator=g) * 0.1 for k, v in VQModel(cfg).state_dict().items()}
    sd["loss.logvar"] = torch.zeros(())
    sd["loss.discriminator.main.0.weight"] = torch.randn(8, 1, 4, 4, generator=g)
    sd["loss.perceptual_loss.lin0.model.1.weight"] = torch.randn(1, 64, 1, 1, generator=g)
    return sd


def test_taming_state_dict_loads_strictly_and_ignores_loss_keys() -> None:
    sd = _taming_state_dict(TINY)
    model = VQModel(TINY).eval()
    ignored = load_taming_vq(model, sd)
    assert sorted(ignored) == sorted(k for k in sd if k.startswith("loss."))
    own = model.state_dict()
    for k, v in own.items():
        torch.testing.assert_close(v, sd[k])
    prefixed = {f"first_stage_model.{k}": v for k, v in sd.items()} | {"model.x": torch.ones(1)}
    load_taming_vq(VQModel(TINY), prefixed, prefix="first_stage_model.")


def test_state_dict_mismatch_is_a_clear_error() -> None:
    sd = _taming_state_dict(TINY)
    del sd["quant_conv.bias"]
    with pytest.raises(ValueError, match="missing keys.*quant_conv.bias"):
        load_taming_vq(VQModel(TINY), sd)
    sd = _taming_state_dict(replace(TINY, n_embed=16))
    with pytest.raises(ValueError, match="shape mismatch for quantize.embedding.weight"):
        load_taming_vq(VQModel(TINY), sd)


def test_encode_decode_matches_the_taming_pipeline() -> None:
    torch.manual_seed(0)
    model = VQModel(TINY).eval()
    x = torch.randn(2, 1, 16, 16)
    quant, loss, info = model.encode(x)
    h = model.quant_conv(model.encoder(x))  # taming: encoder -> quant_conv -> quantize
    codebook = model.quantize.embedding.weight
    d = ((h.permute(0, 2, 3, 1).reshape(-1, 8)[:, None] - codebook[None]) ** 2).sum(-1)
    torch.testing.assert_close(info.indices, d.argmin(1))
    assert quant.shape == (2, 8, 4, 4)
    rec, loss2, _ = model(x)
    torch.testing.assert_close(rec, model.decoder(model.post_quant_conv(quant)))
    torch.testing.assert_close(loss, loss2)
    # decode_code from (B, h, w) indices, and from flat indices with taming's shape argument
    idx = model.encode_to_indices(x)
    assert idx.shape == (2, 4, 4)
    torch.testing.assert_close(model.decode_code(idx), rec)
    torch.testing.assert_close(model.decode_code(idx.reshape(-1), shape=(2, 4, 4, 8)), rec)


def test_decode_code_bad_input() -> None:
    model = VQModel(TINY).eval()
    with pytest.raises(ValueError, match=r"code indices must lie in \[0, 32\)"):
        model.decode_code(torch.full((1, 4, 4), 32))
    with pytest.raises(ValueError, match="need shape"):
        model.decode_code(torch.zeros(1, 16, dtype=torch.long))
    with pytest.raises(ValueError, match="do not fit shape"):
        model.decode_code(torch.zeros(1, 15, dtype=torch.long), shape=(1, 4, 4, 8))
    with pytest.raises(ValueError, match="expected quantised latent"):
        model.decode(torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match="divisible"):
        model.encode(torch.zeros(1, 1, 18, 18))


@pytest.mark.parametrize("quantizer", ["vq", "ema", "gumbel", "fsq"])
def test_each_quantizer_round_trips(quantizer: str) -> None:
    torch.manual_seed(0)
    cfg = replace(TINY, quantizer=quantizer, fsq_levels=(4, 4, 3))
    model = VQModel(cfg)
    x = torch.randn(2, 1, 16, 16)
    rec, loss, info = model(x)
    assert rec.shape == x.shape and loss.ndim == 0
    (rec.square().mean() + loss).backward()
    assert model.encoder.conv_in.weight.grad is not None  # gradients reach the encoder
    model.eval()
    torch.manual_seed(1)  # Gumbel quantisation samples noise also in eval mode (as taming)
    idx = model.encode_to_indices(x)
    assert int(idx.max()) < model.n_codes
    torch.manual_seed(1)
    quant, _, _ = model.encode(x)
    torch.testing.assert_close(model.decode_code(idx), model.decode(quant))
    if quantizer == "gumbel":
        assert "quantize.embed.weight" in model.state_dict()
        assert "quantize.proj.weight" in model.state_dict()
    if quantizer == "fsq":
        assert model.n_codes == 48 and cfg.embed_dim == 3


def test_config_validation_and_round_trip() -> None:
    with pytest.raises(ValueError, match="unknown quantizer"):
        VQConfig(quantizer="lfq")
    with pytest.raises(ValueError, match="unknown VQGAN preset"):
        get_vqgan_config("nope")
    with pytest.raises(ValueError, match="unknown VQConfig keys"):
        VQConfig.from_dict({"chh": 3})
    cfg = get_vqgan_config("digits", n_embed=48)
    assert VQConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.latent_shape(16) == (4, 4)


def test_gumbel_preset_has_taming_gumbel_keys() -> None:
    # taming's vqgan_gumbel_f8_8192 layout (GumbelVQ) at a quarter of the width
    cfg = get_vqgan_config("gumbel_f8_8192", ch=32)
    sd = VQModel(cfg).state_dict()
    assert cfg.downsample_factor == 8 and cfg.kl_weight == 1e-8
    assert tuple(sd["quantize.proj.weight"].shape) == (8192, 256, 1, 1)
    assert tuple(sd["quantize.embed.weight"].shape) == (8192, 256)
    assert "quantize.embedding.weight" not in sd and "encoder.down.3.attn.0.q.weight" in sd


def test_net2net_first_stage_loads_with_its_prefix() -> None:
    sd = _taming_state_dict(TINY)
    ckpt = {f"first_stage_model.{k}": v for k, v in sd.items()}
    ckpt |= {"transformer.tok_emb.weight": torch.zeros(3, 4), "cond_stage_model.x": torch.ones(1)}
    model = VQModel(TINY)
    load_taming_vq(model, ckpt, prefix="first_stage_model.")
    torch.testing.assert_close(model.quantize.embedding.weight, sd["quantize.embedding.weight"])


@pytest.mark.parametrize("quantizer", ["vq", "gumbel"])
def test_remap_restricts_indices_and_loads_taming_used_buffer(quantizer: str, tmp_path) -> None:  # noqa: ANN001
    import numpy as np

    used = [1, 4, 9, 16, 25]
    np.save(tmp_path / "used.npy", np.array(used))
    cfg = replace(
        TINY, quantizer=quantizer, remap=str(tmp_path / "used.npy"), unknown_index="extra"
    )
    torch.manual_seed(0)
    model = VQModel(cfg).eval()
    assert model.n_codes == 6  # five used codes + the "extra" unknown index
    assert model.state_dict()["quantize.used"].tolist() == used
    x = torch.randn(2, 1, 16, 16)
    torch.manual_seed(1)
    idx = model.encode_to_indices(x)
    assert 0 <= int(idx.min()) and int(idx.max()) <= 5
    with pytest.raises(ValueError, match=r"code indices must lie in \[0, 6\)"):
        model.decode_code(torch.full((1, 4, 4), 6))
    # the remapped index k decodes to code used[k]
    table = model.quantize.embedding.weight if quantizer == "vq" else model.quantize.embed.weight
    entry = model.quantize.get_codebook_entry(torch.tensor([[[2]]]))  # (1, C, 1, 1)
    torch.testing.assert_close(entry[0, :, 0, 0], table[9])
    # a list remap gives the same model, and its state dict (with ``quantize.used``) loads
    listed = VQModel(replace(cfg, remap=tuple(used)))
    load_taming_vq(listed, model.state_dict())
    assert VQConfig.from_dict(replace(cfg, remap=tuple(used)).to_dict()).remap == tuple(used)
    with pytest.raises(ValueError, match="FSQ has none"):
        replace(cfg, quantizer="fsq")
