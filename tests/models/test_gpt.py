"""GPT over codes: taming layout, minGPT maths, KV cache, filtering, sampling, sliding window."""

import math

import pytest
import torch
import torch.nn.functional as F

from genmodels.checkpoints.taming import gpt_config_from_state_dict, load_taming_gpt
from genmodels.configs.gpt import GPTConfig
from genmodels.models.gpt import (
    GPT,
    class_prefix,
    corrupt_tokens,
    next_token_loss,
    sos_prefix,
    teacher_forcing,
)
from genmodels.models.gpt_sampling import (
    make_generators,
    sample,
    sample_next,
    sample_sliding_window,
    top_k_filter,
    top_p_filter,
    window_start,
)


def _gpt(block_size=24, n_unmasked=0, vocab=13, seed=0):
    torch.manual_seed(seed)
    cfg = GPTConfig(vocab, block_size, n_layer=2, n_head=2, n_embd=16, n_unmasked=n_unmasked)
    model = GPT(cfg).eval()
    with torch.no_grad():  # minGPT starts pos_emb at zero; make positions matter in tests
        model.pos_emb.normal_(0, 0.5)
    return model


def _taming_state_dict(cfg: GPTConfig) -> dict:
    g = torch.Generator().manual_seed(1)
    c, sd = cfg.n_embd, {}
    sd["tok_emb.weight"] = torch.randn(cfg.vocab_size, c, generator=g)
    sd["pos_emb"] = torch.randn(1, cfg.block_size, c, generator=g)
    shapes = {"key": (c, c), "query": (c, c), "value": (c, c), "proj": (c, c)}
    for n in range(cfg.n_layer):
        p = f"blocks.{n}."
        for ln in ("ln1", "ln2"):
            sd[p + ln + ".weight"] = 1 + 0.1 * torch.randn(c, generator=g)
            sd[p + ln + ".bias"] = 0.1 * torch.randn(c, generator=g)
        for name, shape in shapes.items():
            sd[f"{p}attn.{name}.weight"] = torch.randn(shape, generator=g) / math.sqrt(c)
            sd[f"{p}attn.{name}.bias"] = 0.1 * torch.randn(c, generator=g)
        mask = torch.tril(torch.ones(cfg.block_size, cfg.block_size))
        mask[: cfg.n_unmasked, : cfg.n_unmasked] = 1
        sd[p + "attn.mask"] = mask.view(1, 1, cfg.block_size, cfg.block_size)
        sd[p + "mlp.0.weight"] = torch.randn(4 * c, c, generator=g) / math.sqrt(c)
        sd[p + "mlp.0.bias"] = 0.1 * torch.randn(4 * c, generator=g)
        sd[p + "mlp.2.weight"] = torch.randn(c, 4 * c, generator=g) / math.sqrt(4 * c)
        sd[p + "mlp.2.bias"] = 0.1 * torch.randn(c, generator=g)
    sd["ln_f.weight"] = torch.ones(c)
    sd["ln_f.bias"] = torch.zeros(c)
    sd["head.weight"] = torch.randn(cfg.vocab_size, c, generator=g) / math.sqrt(c)
    return sd


def _mingpt_reference(sd: dict, cfg: GPTConfig, idx: torch.Tensor) -> torch.Tensor:
    """minGPT's forward written out with explicit softmax attention (taming's mingpt.py)."""
    b, t = idx.shape
    c, nh = cfg.n_embd, cfg.n_head
    x = sd["tok_emb.weight"][idx] + sd["pos_emb"][:, :t]
    for n in range(cfg.n_layer):
        p = f"blocks.{n}."

        def lin(name, v, p=p):
            return v @ sd[p + name + ".weight"].T + sd[p + name + ".bias"]

        h = F.layer_norm(x, (c,), sd[p + "ln1.weight"], sd[p + "ln1.bias"])
        k, q, v = (
            lin("attn." + m, h).view(b, t, nh, c // nh).transpose(1, 2)
            for m in ("key", "query", "value")
        )
        att = (q @ k.transpose(-2, -1)) / math.sqrt(c // nh)
        att = att.masked_fill(sd[p + "attn.mask"][:, :, :t, :t] == 0, float("-inf")).softmax(-1)
        x = x + lin("attn.proj", (att @ v).transpose(1, 2).reshape(b, t, c))
        h = F.layer_norm(x, (c,), sd[p + "ln2.weight"], sd[p + "ln2.bias"])
        x = x + lin("mlp.2", F.gelu(lin("mlp.0", h)))
    x = F.layer_norm(x, (c,), sd["ln_f.weight"], sd["ln_f.bias"])
    return x @ sd["head.weight"].T


@pytest.mark.parametrize("n_unmasked", [0, 5])
def test_taming_state_dict_loads_strict_and_matches_mingpt(n_unmasked):
    cfg = GPTConfig(11, 16, n_layer=2, n_head=4, n_embd=16, n_unmasked=n_unmasked)
    model = GPT(cfg).eval()
    sd = _taming_state_dict(cfg)
    assert set(model.state_dict()) == set(sd)
    model.load_state_dict(sd, strict=True)
    idx = torch.randint(0, 11, (2, 16), generator=torch.Generator().manual_seed(0))
    logits, loss = model(idx, targets=idx)
    ref = _mingpt_reference(sd, cfg, idx)
    torch.testing.assert_close(logits, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loss, F.cross_entropy(ref.reshape(-1, 11), idx.reshape(-1)))


@pytest.mark.parametrize("n_unmasked", [0, 5])
def test_net2net_checkpoint_loads_via_the_transformer_prefix(n_unmasked):
    # a taming Net2NetTransformer state dict: the GPT under ``transformer.`` beside the stages
    cfg = GPTConfig(11, 16, n_layer=2, n_head=4, n_embd=16, n_unmasked=n_unmasked)
    gpt_sd = _taming_state_dict(cfg)
    others = {
        "first_stage_model.quantize.embedding.weight": torch.zeros(8, 4),
        "cond_stage_model.quant_conv.weight": torch.zeros(4, 4, 1, 1),
        "permuter.forward_shuffle_idx": torch.arange(16),
    }
    ckpt = {f"transformer.{k}": v for k, v in gpt_sd.items()} | others
    inferred = gpt_config_from_state_dict(ckpt, n_head=4)
    assert inferred == cfg
    model = GPT(inferred).eval()
    assert sorted(load_taming_gpt(model, ckpt)) == sorted(others)
    idx = torch.randint(0, 11, (2, 16), generator=torch.Generator().manual_seed(0))
    ref = _mingpt_reference(gpt_sd, cfg, idx)
    torch.testing.assert_close(model(idx)[0], ref, atol=1e-5, rtol=1e-5)
    # a bare GPT state dict loads with prefix=""
    load_taming_gpt(GPT(cfg), gpt_sd, prefix="")


def test_net2net_checkpoint_mismatch_names_the_key():
    cfg = GPTConfig(11, 16, n_layer=2, n_head=4, n_embd=16)
    ckpt = {f"transformer.{k}": v for k, v in _taming_state_dict(cfg).items()}
    del ckpt["transformer.blocks.1.attn.proj.bias"]
    with pytest.raises(ValueError, match=r"missing keys: transformer\.blocks\.1\.attn\.proj\.bias"):
        load_taming_gpt(GPT(cfg), ckpt)
    ckpt = {f"transformer.{k}": v for k, v in _taming_state_dict(cfg).items()}
    ckpt["transformer.blocks.0.attn.c_attn.weight"] = torch.zeros(48, 16)
    with pytest.raises(ValueError, match=r"unexpected keys: transformer\.blocks\.0\.attn\.c_attn"):
        load_taming_gpt(GPT(cfg), ckpt)
    bigger = GPTConfig(12, 16, n_layer=2, n_head=4, n_embd=16)
    wrong = (
        r"shape mismatch for .*transformer\.tok_emb\.weight: expected \(12, 16\), got \(11, 16\)"
    )
    with pytest.raises(ValueError, match=wrong):
        load_taming_gpt(
            GPT(bigger), {f"transformer.{k}": v for k, v in _taming_state_dict(cfg).items()}
        )
    with pytest.raises(ValueError, match="no key starts with 'transformer.'"):
        load_taming_gpt(GPT(cfg), _taming_state_dict(cfg))
    with pytest.raises(ValueError, match="transformer.pos_emb is missing"):
        gpt_config_from_state_dict({"transformer.tok_emb.weight": torch.zeros(3, 4)}, n_head=1)


@pytest.mark.parametrize("n_unmasked", [0, 4])
def test_kv_cache_logits_equal_full_forward(n_unmasked):
    model = _gpt(n_unmasked=n_unmasked)
    idx = torch.randint(0, 13, (3, 20), generator=torch.Generator().manual_seed(2))
    full, _ = model(idx)
    cache = model.new_cache()
    steps = [model(idx[:, :6], cache=cache)[0]]  # a prefix longer than n_unmasked at once
    for t in range(6, 20):
        steps.append(model(idx[:, t : t + 1], cache=cache)[0])
    assert cache.length == 20
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)


def test_cached_and_uncached_sampling_agree():
    model = _gpt()
    prefix = class_prefix(torch.tensor([3, 7]))
    logs = {True: [], False: []}
    toks = {}
    for use_cache in (True, False):
        toks[use_cache] = sample(
            model,
            prefix,
            12,
            generators=5,
            top_k=8,
            use_cache=use_cache,
            callback=lambda step, lg, u=use_cache: logs[u].append(lg),
        )
    assert toks[True].shape == (2, 12)
    assert torch.equal(toks[True], toks[False])
    torch.testing.assert_close(torch.stack(logs[True]), torch.stack(logs[False]), atol=1e-5, rtol=0)
    # a batch equals the single runs with the matching seeds
    single = sample(model, prefix[1:], 12, generators=[6], top_k=8)
    assert torch.equal(single[0], toks[True][1])
    # another seed gives another sequence
    assert not torch.equal(sample(model, prefix, 12, generators=99, top_k=8), toks[True])


def test_top_k_hand_example():
    logits = torch.tensor([[1.0, 3.0, 2.0, 5.0], [0.0, 1.0, 1.0, 0.5]])
    out = top_k_filter(logits, 2)
    inf = float("-inf")
    assert out.tolist() == [[inf, 3.0, inf, 5.0], [inf, 1.0, 1.0, inf]]
    assert torch.equal(top_k_filter(logits, 10), logits)


def test_top_p_hand_example_and_hf_parity():
    probs = torch.tensor([[0.05, 0.5, 0.15, 0.3]])
    logits = probs.log()
    inf = float("-inf")
    # sorted 0.5, 0.3, 0.15, 0.05: p = 0.7 keeps 0.5 and 0.3 (0.3 crosses 0.7)
    kept = top_p_filter(logits, 0.7)
    assert torch.isinf(kept).tolist() == [[True, False, True, False]]
    assert torch.isinf(top_p_filter(logits, 0.4)).tolist() == [[True, False, True, True]]
    assert torch.equal(top_p_filter(logits, 1.0), logits)
    assert top_p_filter(logits, 0.9)[0, 0] == inf

    from transformers.generation.logits_process import TopPLogitsWarper

    rand = torch.randn(4, 50, generator=torch.Generator().manual_seed(0)) * 2
    for p in (0.3, 0.8, 0.95):
        ref = TopPLogitsWarper(p)(None, rand.clone())
        assert torch.equal(torch.isinf(top_p_filter(rand, p)), torch.isinf(ref))


def test_sample_next_greedy_temperature_and_seeds():
    logits = torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 0.0]])
    assert sample_next(logits, greedy=True).tolist() == [1, 0]
    gens = make_generators(0, 2)
    # tiny temperature concentrates on the argmax
    assert sample_next(logits, gens, temperature=1e-3).tolist() == [1, 0]
    a = sample_next(logits.repeat(1, 1), make_generators([4, 5], 2))
    b = sample_next(logits, [torch.Generator().manual_seed(4), torch.Generator().manual_seed(5)])
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="one per sample"):
        make_generators([1, 2, 3], 2)
    with pytest.raises(ValueError, match="temperature"):
        sample_next(logits, temperature=0.0)


def test_pkeep_corruption_and_teacher_forcing():
    g = torch.Generator().manual_seed(0)
    z = torch.randint(0, 10, (4, 256), generator=g)
    assert torch.equal(corrupt_tokens(z, 1.0, 10, g), z)
    c0 = corrupt_tokens(z, 0.0, 1000, g) - 0
    assert (c0 == z).float().mean() < 0.05 and c0.max() < 1000
    kept = (corrupt_tokens(z + 500, 0.5, 500, g) == z + 500).float().mean()  # random < 500
    assert abs(float(kept) - 0.5) < 0.05
    with pytest.raises(ValueError, match="pkeep"):
        corrupt_tokens(z, 1.5, 10)

    model = _gpt()
    c, z = sos_prefix(2, sos_token=12), torch.randint(0, 12, (2, 10), generator=g)
    logits, target = teacher_forcing(model, c, z, pkeep=0.5)  # eval mode: no corruption
    full, _ = model(torch.cat([c, z], 1)[:, :-1])
    assert torch.equal(logits, full) and torch.equal(target, z)
    per_sample = next_token_loss(model, c, z)
    assert per_sample.shape == (2,)
    torch.testing.assert_close(per_sample.mean(), F.cross_entropy(full.transpose(1, 2), z))
    model.train()
    logits_train, _ = teacher_forcing(model, c, z, pkeep=0.0, generator=g)
    assert not torch.allclose(logits_train, full)
    # conditioning on another image's codes: a longer prefix, logits from its last token on
    model.eval()
    c_codes = torch.randint(0, 12, (2, 3), generator=g)
    logits, _ = teacher_forcing(model, c_codes, z)
    full, _ = model(torch.cat([c_codes, z], 1)[:, :-1])
    assert logits.shape == (2, 10, 13) and torch.equal(logits, full[:, 2:])
    assert class_prefix(torch.tensor([1, 4]), n_tokens=2, offset=10).tolist() == [
        [11, 11],
        [14, 14],
    ]


def _taming_local(i, size, window):
    half = window // 2
    if i <= half:
        return i
    if size - i < half:
        return window - (size - i)
    return half


def test_window_start_matches_taming_rule():
    for size, window in [(32, 16), (20, 8), (16, 16)]:
        for i in range(size):
            assert window_start(i, size, window) == i - _taming_local(i, size, window)
    assert all(0 <= window_start(i, 7, 5) <= 2 for i in range(7))  # odd windows stay inside


def test_sliding_window_equals_plain_sampling_when_window_covers_grid():
    model = _gpt(block_size=17)
    prefix = sos_prefix(2, 12)
    plain = sample(model, prefix, 16, generators=3, top_p=0.9)
    windowed = sample_sliding_window(model, (4, 4), (4, 4), prefix=prefix, generators=3, top_p=0.9)
    assert torch.equal(windowed.view(2, 16), plain)


def test_sliding_window_callback_restricts_the_vocabulary():
    model = _gpt(block_size=17)
    steps = []

    def only_low_codes(step, logits):
        steps.append(step)
        logits[:, 5:] = float("-inf")

    codes = sample_sliding_window(
        model, (6, 5), (4, 4), prefix=sos_prefix(2, 12), generators=1, callback=only_low_codes
    )
    assert codes.max() < 5 and steps == list(range(30))  # one call per position, raster order


def test_sliding_window_on_larger_grid_with_cond_codes():
    model = _gpt(block_size=32)
    cond = torch.randint(0, 12, (2, 6, 5), generator=torch.Generator().manual_seed(0))
    codes = sample_sliding_window(model, (6, 5), (4, 4), cond_grid=cond, generators=0, top_k=5)
    assert codes.shape == (2, 6, 5) and codes.min() >= 0 and codes.max() < 13
    again = sample_sliding_window(model, (6, 5), (4, 4), cond_grid=cond, generators=0, top_k=5)
    assert torch.equal(codes, again)
    with pytest.raises(ValueError, match="block_size"):
        sample_sliding_window(model, (8, 8), (5, 5), cond_grid=torch.zeros(2, 8, 8).long())
    with pytest.raises(ValueError, match="cond_grid"):
        sample_sliding_window(model, (6, 5), (4, 4), cond_grid=cond[:, :5])


def test_bad_inputs():
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(10, 8, n_head=3, n_embd=16)
    with pytest.raises(ValueError, match="block_size"):
        GPTConfig(10, 8, n_unmasked=9)
    model = _gpt(block_size=8)
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 13\)"):
        model(torch.full((1, 3), 13))
    with pytest.raises(ValueError, match="block_size"):
        sample(model, sos_prefix(1), 9)
    with pytest.raises(ValueError, match="P >= 1"):
        sample(model, torch.zeros(1, 0, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="top_p"):
        top_p_filter(torch.zeros(1, 3), 0.0)
