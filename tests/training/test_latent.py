"""Latent diffusion in the trainer: frozen VAE, latent cache, KL autoencoder training, config."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from safetensors.torch import save_file

from genmodels.configs.autoencoder import AutoencoderConfig, get_autoencoder_config
from genmodels.configs.unet import UNetConfig
from genmodels.data.digits import load_digits_tensor
from genmodels.data.tensor_dataset import ImageTensorDataset
from genmodels.models.autoencoder_kl import AutoencoderKL
from genmodels.training import latents as latents_mod
from genmodels.training.autoencoder_train import (
    AutoencoderTrainConfig,
    latent_scale_factor,
    load_autoencoder_kl,
    save_autoencoder_kl,
    train_autoencoder_kl,
)
from genmodels.training.config import DataConfig, EMAConfig, LatentConfig, OptimConfig, load_config
from genmodels.training.latents import build_latent_dataset, encode_images, load_frozen_vae
from genmodels.training.trainer import Trainer
from genmodels.training.vqgan_loss import VQGANLossConfig
from tests.training.helpers import tiny_config

# f2 KL autoencoder for 1-channel 8x8 digits -> latents (4, 4, 4)
VAE_CFG = AutoencoderConfig(
    ch=32, ch_mult=(1, 2), num_res_blocks=1, in_channels=1, out_ch=1, resolution=8,
    z_channels=4, embed_dim=4, scale_factor=0.7,
)  # fmt: skip
LATENT_UNET = UNetConfig(
    in_channels=4, out_channels=4, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
    attention_resolutions=(), num_head_channels=32, num_classes=11,
)  # fmt: skip


def _vae() -> AutoencoderKL:
    torch.manual_seed(0)
    return AutoencoderKL(VAE_CFG).eval()


def _digits(n: int = 16) -> ImageTensorDataset:
    x, y = load_digits_tensor(8)
    return ImageTensorDataset(x[:n], y[:n], [str(i) for i in range(10)])


def _latent_cfg(tmp_path, **latent):
    return tiny_config(
        tmp_path / "run", model=LATENT_UNET, latent=LatentConfig(enabled=True, **latent),
        data=DataConfig(dataset="digits", size=8, batch_size=16), ema=EMAConfig(enabled=False),
    )  # fmt: skip


def test_encode_images_is_scaled_posterior_mode():
    vae, x = _vae(), _digits(4).images
    with torch.no_grad():
        mode = vae.encode(x).mode()
    torch.testing.assert_close(encode_images(vae, x), 0.7 * mode)
    g1, g2 = (torch.Generator().manual_seed(5) for _ in range(2))
    torch.testing.assert_close(encode_images(vae, x, True, g1), encode_images(vae, x, True, g2))


def test_latent_cache_round_trip(tmp_path, monkeypatch):
    vae, data = _vae(), _digits(10)
    path = tmp_path / "cache" / "latents.safetensors"
    cfg = LatentConfig(enabled=True, cache_path=str(path), encode_batch_size=3)
    first = build_latent_dataset(vae, data, cfg)
    assert path.is_file() and not list(path.parent.glob(".*tmp*"))  # renamed, no temp left
    assert first.images.shape == (10, 4, 4, 4)
    torch.testing.assert_close(first.images, encode_images(vae, data.images))  # batching exact
    assert torch.equal(first.labels, data.labels)

    def no_encoding(*args, **kwargs):
        raise AssertionError("the cache should have been read")

    monkeypatch.setattr(latents_mod, "_encode_all", no_encoding)
    again = build_latent_dataset(vae, data, cfg)
    assert torch.equal(again.images, first.images) and torch.equal(again.labels, first.labels)
    with pytest.raises(ValueError, match="latent cache .* was written for"):
        build_latent_dataset(vae, data, replace(cfg, sample_posterior=True))


def test_load_frozen_vae_genmodels_and_ldm_checkpoints(tmp_path):
    vae, x = _vae(), _digits(2).images
    save_autoencoder_kl(tmp_path / "vae.safetensors", vae)
    loaded = load_autoencoder_kl(tmp_path / "vae.safetensors")
    assert loaded.config == VAE_CFG and not any(p.requires_grad for p in loaded.parameters())
    torch.testing.assert_close(encode_images(loaded, x), encode_images(vae, x))
    # an ldm checkpoint: first_stage_model.* keys among others, config from the preset
    torch.manual_seed(1)
    tiny = AutoencoderKL(get_autoencoder_config("tiny")).eval()
    sd = {f"first_stage_model.{k}": v.contiguous() for k, v in tiny.state_dict().items()}
    sd["model.diffusion_model.out.0.weight"] = torch.zeros(2)
    save_file(sd, str(tmp_path / "ldm.safetensors"))
    cfg = LatentConfig(vae_path=str(tmp_path / "ldm.safetensors"), vae_scale_factor=0.5)
    ldm = load_frozen_vae(cfg)
    assert ldm.config.scale_factor == 0.5
    x3 = torch.rand(1, 3, 16, 16) * 2 - 1
    torch.testing.assert_close(encode_images(ldm, x3), 0.5 * tiny.encode(x3).mode())
    with pytest.raises(ValueError, match="does not fit latent.vae_preset='small'"):
        load_frozen_vae(replace(cfg, vae_preset="small"))
    with pytest.raises(ValueError, match="latent.vae_path"):
        load_frozen_vae(LatentConfig(enabled=True))


def test_trainer_latent_steps_reduce_loss_on_fixed_batch(tmp_path):
    cfg = replace(_latent_cfg(tmp_path), optim=OptimConfig(lr=3e-3))
    trainer = Trainer(cfg, dataset=_digits(16), vae=_vae())
    assert trainer.sample_shape == (4, 4, 4)
    z = trainer.dataset.images  # cached latents = the fixed batch (dataset size == batch size)
    labels = trainer.dataset.labels
    draws = trainer.objective.draw(16, (4, 4, 4), torch.Generator().manual_seed(1))

    def loss() -> torch.Tensor:
        return trainer.objective.loss(z, labels, draws).mean()

    with torch.no_grad():
        before = float(loss())
    for _ in range(15):  # the trainer's model + optimiser on one fixed batch and draw
        trainer.optimizer.zero_grad()
        loss().backward()
        trainer.optimizer.step()
    with torch.no_grad():
        assert float(loss()) < 0.7 * before
    assert trainer.train_step()["loss"] > 0  # the trainer's own step on cached latents
    images = trainer.decode(z[:2])
    assert images.shape == (2, 1, 8, 8) and images.abs().max() <= 1
    grid = trainer.save_samples(tmp_path / "grid.png", per_class=1)
    assert grid is not None and grid.is_file()


def test_trainer_encodes_per_batch_without_cache(tmp_path):
    vae, data = _vae(), _digits(16)
    trainer = Trainer(_latent_cfg(tmp_path, cache=False), dataset=data, vae=vae)
    assert trainer.dataset is data and trainer.sample_shape == (4, 4, 4)
    x, _ = trainer._load(torch.arange(3))
    torch.testing.assert_close(x, encode_images(vae, data.images[:3]))
    assert trainer.train_step()["loss"] > 0


def test_latent_config_errors(tmp_path):
    with pytest.raises(ValueError, match="latent.vae_pth: unknown key"):
        load_config(None, ["latent.vae_pth=x.safetensors"])
    with pytest.raises(ValueError, match="latent.cache: expected true/false"):
        load_config(None, ["latent.cache=maybe"])
    with pytest.raises(ValueError, match="latent.encode_batch_size must be >= 1"):
        load_config(None, ["latent.encode_batch_size=0"])
    with pytest.raises(ValueError, match="latent.vae_scale_factor must be > 0"):
        load_config(None, ["latent.vae_scale_factor=0"])
    with pytest.raises(ValueError, match="latent.vae_path"):
        Trainer(_latent_cfg(tmp_path), dataset=_digits(16))
    bad = replace(_latent_cfg(tmp_path), model=replace(LATENT_UNET, in_channels=3))
    with pytest.raises(ValueError, match="model.in_channels=3 does not match the latent"):
        Trainer(bad, dataset=_digits(16), vae=_vae())
    with pytest.raises(ValueError, match="latent.enabled is false"):
        Trainer(tiny_config(tmp_path), dataset=_digits(16), vae=_vae())


def test_autoencoder_training_reduces_reconstruction_loss():
    images = _digits(16).images
    vae = _vae()

    def l1() -> float:
        with torch.no_grad():
            return float((vae(images, sample_posterior=False)[0] - images).abs().mean())

    before = l1()
    records = train_autoencoder_kl(
        vae, images, AutoencoderTrainConfig(steps=25, batch_size=16, lr=2e-3, log_every=5)
    )
    assert [r["step"] for r in records] == [5, 10, 15, 20, 25]
    assert {"rec_loss", "kl_loss"} <= set(records[0]) and records[-1]["kl_loss"] > 0
    assert l1() < 0.6 * before
    scale = latent_scale_factor(vae, images)
    with torch.no_grad():
        assert float((vae.encode(images).mode() * scale).std()) == pytest.approx(1.0, rel=1e-4)


def test_autoencoder_training_with_patchgan():
    images = _digits(8).images
    loss = VQGANLossConfig(
        perceptual_weight=0.0, disc_start=2, disc_num_layers=1, disc_ndf=8, disc_loss="vanilla"
    )
    cfg = AutoencoderTrainConfig(steps=4, batch_size=4, log_every=1, loss=loss)
    records = train_autoencoder_kl(_vae(), images, cfg)
    assert "d_loss" not in records[1] and "g_loss" not in records[1]  # before disc_start
    assert {"d_loss", "g_loss", "d_weight"} <= set(records[3])
    with pytest.raises(ValueError, match="expected images"):
        train_autoencoder_kl(_vae(), torch.zeros(4, 3, 8, 8), cfg)
    with pytest.raises(ValueError, match="kl_weight"):
        AutoencoderTrainConfig(kl_weight=-1.0)
