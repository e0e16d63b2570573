"""LoRA formats, stacking, unloading and bad files on tiny random models (no reference library
needed except PEFT's LyCORIS formulas, used as the reference math for LoHa / LoKr)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from genmodels.adapters.kohya_names import (
    Target,
    diffusers_lookup,
    kohya_lookup,
    kohya_name,
    kohya_names,
)
from genmodels.adapters.lora import LoraError
from genmodels.pipelines.build import build_pipeline
from tests.adapters.helpers import kohya_lora, module_of, text_models

Q = "input_blocks.3.1.transformer_blocks.0.attn1.to_q"  # (64, 64)
CONV = "input_blocks.1.0.in_layers.2"  # a 3x3 conv of a ResBlock
TE_Q = "text_model.encoder.layers.0.self_attn.q_proj"


@pytest.fixture
def pipe():
    return build_pipeline()


def _weights(pipe) -> dict[str, torch.Tensor]:
    out = {f"unet.{k}": v for k, v in pipe.unet.state_dict().items()}
    for i, m in enumerate(text_models(pipe)):
        out |= {f"te{i}.{k}": v for k, v in m.state_dict().items()}
    return out


def _save(path, tensors: dict, metadata: dict | None = None):
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    return path


def _delta(pipe, path, weight: float, target: Target) -> torch.Tensor:
    module = module_of(pipe, target)
    before = module.weight.detach().clone()
    pipe.load_lora(path, weight)
    delta = module.weight.detach() - before
    pipe.unload_loras()
    assert torch.equal(module.weight, before)
    return delta


def test_names_round_trip(pipe) -> None:
    """kohya names in both UNet layouts and the text-encoder names map back to our modules."""
    texts = text_models(pipe)
    lookup = kohya_lookup(pipe.unet, texts, "sd1")
    for layout in ("ldm", "diffusers"):
        names = kohya_names(pipe.unet, texts, "sd1", layout)
        assert all(lookup[name] == target for target, name in names.items())
    names = kohya_names(pipe.unet, texts, "sd1")
    assert names[Target("unet", 0, Q)] == kohya_name(
        "lora_unet_", "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
    )
    assert names[Target("unet", 0, CONV)] == "lora_unet_down_blocks_0_resnets_0_conv1"
    assert names[Target("text", 0, TE_Q)] == "lora_te_" + TE_Q.replace(".", "_")
    xl = build_pipeline(model_type="sdxl-base")
    xl_names = kohya_names(xl.unet, text_models(xl), "sdxl-base")  # kohya SDXL: LDM paths
    assert xl_names[Target("text", 1, TE_Q)] == "lora_te2_" + TE_Q.replace(".", "_")
    assert all(n.startswith(("lora_unet_input", "lora_unet_middle", "lora_unet_output",
                             "lora_unet_time", "lora_unet_label", "lora_unet_out", "lora_te"))
               for n in xl_names.values())  # fmt: skip
    dotted = diffusers_lookup(pipe.unet, texts, "sd1")
    assert dotted["unet.down_blocks.0.resnets.0.conv1"] == Target("unet", 0, CONV)


def test_lora_formats_give_the_same_delta(pipe, tmp_path) -> None:
    """kohya (diffusers and LDM names), PEFT, older diffusers and attention-processor keys of
    one LoRA give the same delta: weight * alpha / rank * up @ down."""
    g = torch.Generator().manual_seed(0)
    down, up = torch.randn(4, 64, generator=g), torch.randn(64, 4, generator=g)
    expected = 0.5 * (3.0 / 4) * up @ down
    diff = "down_blocks.1.attentions.0.transformer_blocks.0.attn1"
    files = {
        "kohya": {f"lora_unet_{diff.replace('.', '_')}_to_q.lora_down.weight": down,
                  f"lora_unet_{diff.replace('.', '_')}_to_q.lora_up.weight": up,
                  f"lora_unet_{diff.replace('.', '_')}_to_q.alpha": torch.tensor(3.0)},
        "kohya-ldm": {f"{kohya_name('lora_unet_', Q)}.lora_down.weight": down,
                      f"{kohya_name('lora_unet_', Q)}.lora_up.weight": up,
                      f"{kohya_name('lora_unet_', Q)}.alpha": torch.tensor(3.0)},
        "peft-alpha": {f"unet.{diff}.to_q.lora_A.weight": down,
                       f"unet.{diff}.to_q.lora_B.weight": up,
                       f"unet.{diff}.to_q.alpha": torch.tensor(3.0)},
        "processor": {f"{diff}.processor.to_q_lora.down.weight": down,
                      f"{diff}.processor.to_q_lora.up.weight": up,
                      f"{diff}.processor.to_q_lora.alpha": torch.tensor(3.0)},
    }  # fmt: skip
    for name, tensors in files.items():
        path = _save(tmp_path / f"{name}.safetensors", tensors)
        delta = _delta(pipe, path, 0.5, Target("unet", 0, Q))
        torch.testing.assert_close(delta, expected, atol=1e-6, rtol=1e-5, msg=name)
    # PEFT scale from diffusers' lora_adapter_metadata (alpha_pattern wins over lora_alpha)
    meta = {"lora_adapter_metadata": '{"unet.r": 4, "unet.lora_alpha": 8, '
            '"unet.alpha_pattern": {"attn1.to_q": 3}}'}  # fmt: skip
    peft = {f"unet.{diff}.to_q.lora_A.weight": down, f"unet.{diff}.to_q.lora_B.weight": up}
    path = _save(tmp_path / "peft.safetensors", peft, meta)
    torch.testing.assert_close(_delta(pipe, path, 0.5, Target("unet", 0, Q)), expected)
    folder = tmp_path / "diffusers_lora"  # a save_lora_weights folder
    folder.mkdir()
    _save(folder / "pytorch_lora_weights.safetensors", peft, meta)
    torch.testing.assert_close(_delta(pipe, folder, 0.5, Target("unet", 0, Q)), expected)
    with pytest.raises(ValueError, match="finite"):
        pipe.load_lora(path, float("inf"))


def test_lycoris_formats(pipe, tmp_path) -> None:
    """LoHa and LoKr (linear and conv, with Tucker cores), LoCon with lora_mid and "full"
    deltas follow LyCORIS' formulas (PEFT's implementation of them as the reference)."""
    from peft.tuners.loha.layer import make_weight, make_weight_cp
    from peft.tuners.lokr.layer import make_kron

    g = torch.Generator().manual_seed(1)

    def r(*shape):
        return torch.randn(*shape, generator=g) * 0.3

    lin, conv = kohya_name("lora_unet_", Q), kohya_name("lora_unet_", CONV)
    conv_shape = module_of(pipe, Target("unet", 0, CONV)).weight.shape  # (32, 32, 3, 3)
    one = torch.tensor(1.0)
    w1a, w1b, w2a, w2b = r(64, 2), r(2, 64), r(64, 2), r(2, 64)
    t1, t2 = r(2, 2, 3, 3), r(2, 2, 3, 3)
    c1a, c1b, c2a, c2b = r(2, 32), r(2, 32), r(2, 32), r(2, 32)
    k1, k2a, k2b = r(4, 4), r(16, 2), r(2, 16)
    kc1, kt2, kc2a, kc2b = r(4, 4), r(2, 2, 3, 3), r(2, 8), r(2, 8)
    mid, mdown, mup = r(2, 2, 3, 3), r(2, 32, 1, 1), r(32, 2, 1, 1)
    cases = {
        "loha": ({f"{lin}.hada_w1_a": w1a, f"{lin}.hada_w1_b": w1b, f"{lin}.hada_w2_a": w2a,
                  f"{lin}.hada_w2_b": w2b, f"{lin}.alpha": torch.tensor(1.0)},
                 Q, make_weight(w1a, w1b, w2a, w2b, one) * 0.5),
        "loha-tucker": ({f"{conv}.hada_w1_a": c1a, f"{conv}.hada_w1_b": c1b,
                         f"{conv}.hada_w2_a": c2a, f"{conv}.hada_w2_b": c2b,
                         f"{conv}.hada_t1": t1, f"{conv}.hada_t2": t2},
                        CONV, make_weight_cp(t1, c1a, c1b, t2, c2a, c2b, one)),
        "lokr": ({f"{lin}.lokr_w1": k1, f"{lin}.lokr_w2_a": k2a, f"{lin}.lokr_w2_b": k2b,
                  f"{lin}.alpha": torch.tensor(1.0)}, Q, make_kron(k1, k2a @ k2b) * 0.5),
        "lokr-conv-tucker": ({f"{conv}.lokr_w1": kc1, f"{conv}.lokr_t2": kt2,
                              f"{conv}.lokr_w2_a": kc2a, f"{conv}.lokr_w2_b": kc2b},
                             CONV, make_kron(kc1, torch.einsum("i j k l, i p, j r -> p r k l",
                                                               kt2, kc2a, kc2b))),
        "locon-mid": ({f"{conv}.lora_down.weight": mdown, f"{conv}.lora_up.weight": mup,
                       f"{conv}.lora_mid.weight": mid},
                      CONV, torch.einsum("n m k l, i n, m j -> i j k l", mid,
                                         mup.flatten(1), mdown.flatten(1))),
        "full": ({f"{lin}.diff": w1a @ w1b}, Q, w1a @ w1b),
    }  # fmt: skip
    for name, (tensors, path, expected) in cases.items():
        file = _save(tmp_path / f"{name}.safetensors", tensors)
        delta = _delta(pipe, file, 0.8, Target("unet", 0, path))
        shape = conv_shape if path == CONV else delta.shape
        torch.testing.assert_close(delta, 0.8 * expected.reshape(shape), atol=1e-5, rtol=1e-4,
                                   msg=name)  # fmt: skip


def test_stacking_separate_weights_and_exact_unload(pipe, tmp_path) -> None:
    before = {k: v.clone() for k, v in _weights(pipe).items()}
    a = kohya_lora(pipe, tmp_path / "a.safetensors", seed=1, select="attn|q_proj")
    b = kohya_lora(pipe, tmp_path / "b.safetensors", seed=2, rank=2, alpha=1.0,
                   select="attn2|in_layers|fc1")  # fmt: skip
    pipe.load_lora(tmp_path / "a.safetensors", 0.8, text_weight=0.3)
    pipe.load_lora(tmp_path / "b.safetensors", unet_weight=-0.5, text_weight=1.2)
    assert [lora.name for lora in pipe.loras] == ["a", "b"]
    for target in set(a) | set(b):
        w = before[("unet." if target.component == "unet" else f"te{target.index}.")
                   + target.path + ".weight"]  # fmt: skip
        want = w.clone()
        for made, weights, scale in ((a, (0.8, 0.3), 2.0 / 4), (b, (-0.5, 1.2), 1.0 / 2)):
            if target in made:
                down, up = made[target]
                mult = weights[0] if target.component == "unet" else weights[1]
                want += mult * scale * (up.flatten(1) @ down.flatten(1)).reshape(w.shape)
        torch.testing.assert_close(module_of(pipe, target).weight, want, atol=1e-6, rtol=1e-5)
    pipe.unload_loras()
    assert pipe.loras == []
    for k, v in _weights(pipe).items():
        assert torch.equal(v, before[k]), k


def test_unknown_keys_are_listed(pipe, tmp_path) -> None:
    kohya_lora(pipe, tmp_path / "x.safetensors", select="attn1.to_q")
    from safetensors.torch import load_file

    sd = load_file(str(tmp_path / "x.safetensors"))
    sd["lora_unet_no_such_module.lora_down.weight"] = torch.zeros(4, 4)
    sd["lora_unet_down_blocks_1_attentions_0_proj_in.bias_indices"] = torch.zeros(4)
    path = _save(tmp_path / "y.safetensors", sd)
    with pytest.warns(UserWarning, match="2 keys fit no module.*bias_indices.*no_such_module"):
        pipe.load_lora(path)
    pipe.unload_loras()
    with pytest.raises(LoraError, match="no_such_module"):
        pipe.load_lora(path, strict=True)
    sd["lora_unet_down_blocks_1_attentions_0_proj_in.dora_scale"] = torch.zeros(4)
    with pytest.raises(LoraError, match="DoRA LoRAs are not supported"):
        pipe.load_lora(_save(tmp_path / "dora.safetensors", sd))


def test_family_mismatch_and_bad_files(pipe, tmp_path) -> None:
    xl = build_pipeline(model_type="sdxl-base")
    kohya_lora(xl, tmp_path / "xl_style.safetensors", select="attn")
    with pytest.raises(LoraError, match=r"xl_style.safetensors: an SDXL LoRA .* SD 1.x model"):
        pipe.load_lora(tmp_path / "xl_style.safetensors")
    sd15 = {"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down."
            "weight": torch.zeros(4, 768), "lora_unet_down_blocks_0_attentions_0_transformer_"
            "blocks_0_attn2_to_k.lora_up.weight": torch.zeros(320, 4)}  # fmt: skip
    path = _save(tmp_path / "sd15.safetensors", sd15)
    with pytest.raises(LoraError, match=r"sd15.safetensors: an SD 1.x LoRA .* SDXL model"):
        xl.load_lora(path)
    before = {k: v.clone() for k, v in _weights(pipe).items()}
    # the right names with wrong shapes: refused, nothing changed
    good = kohya_lora(pipe, tmp_path / "g.safetensors", select="attn1")
    from safetensors.torch import load_file

    sd = load_file(str(tmp_path / "g.safetensors"))
    key = sorted(k for k in sd if k.endswith("lora_down.weight"))[-1]
    sd[key] = torch.zeros(4, 7)
    with pytest.raises(LoraError, match=r"shapes\.safetensors: .*(delta|fit)"):
        pipe.load_lora(_save(tmp_path / "shapes.safetensors", sd))
    assert good and pipe.loras == []
    for k, v in _weights(pipe).items():
        assert torch.equal(v, before[k]), k
    # truncated file, not a LoRA at all
    data = (tmp_path / "g.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(LoraError, match=r"cut.safetensors: .*truncated or corrupt"):
        pipe.load_lora(tmp_path / "cut.safetensors")
    path = _save(tmp_path / "vae.safetensors", {"encoder.conv_in.weight": torch.zeros(1)})
    with pytest.raises(LoraError, match=r"vae.safetensors: none of its 1 keys"):
        pipe.load_lora(path)
    with pytest.raises(LoraError, match="no such"):
        pipe.load_lora(tmp_path / "missing.safetensors")


def test_bf16_merge_rounds_once_and_unloads_exactly(tmp_path) -> None:
    pipe = build_pipeline(dtype=torch.bfloat16)
    target = Target("unet", 0, Q)
    original = module_of(pipe, target).weight.data
    made = kohya_lora(pipe, tmp_path / "a.safetensors", select="attn1.to_q$")
    pipe.load_lora(tmp_path / "a.safetensors", 0.9)
    down, up = made[target]
    want = (original.float() + 0.9 * 0.5 * up.float() @ down.float()).to(torch.bfloat16)
    torch.testing.assert_close(module_of(pipe, target).weight, want, atol=0, rtol=0)
    pipe.unload_loras()
    restored = module_of(pipe, target).weight
    assert restored.data_ptr() == original.data_ptr() and torch.equal(restored, original)
