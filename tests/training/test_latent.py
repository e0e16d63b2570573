"""Latent diffusion in the trainer: frozen VAE, latent cache, KL autoencoder training, config."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from genmodels.checkpoints.vae import VAE_FILE, load_frozen_vae, load_vae, save_vae
from genmodels.configs.autoencoder import AutoencoderConfig, get_autoencoder_config
from genmodels.configs.conditioning import LatentConfig
from genmodels.configs.unet import UNetConfig
from genmodels.data.digits import load_digits_tensor
from genmodels.data.tensor_dataset import ImageTensorDataset
from genmodels.models.autoencoder_kl import AutoencoderKL
from genmodels.training import latents as latents_mod
from genmodels.training.autoencoder import latent_scale_factor, train_autoencoder
from genmodels.training.autoencoder_loss import AutoencoderLossConfig
from genmodels.training.config import DataConfig, EMAConfig, OptimConfig
from genmodels.training.diffusion import Trainer
from genmodels.training.latents import build_latent_dataset
from genmodels.training.regularizers import RegularizerConfig
from genmodels.training.task_configs import AutoencoderRunConfig
from genmodels.training.tasks import build_config
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


def encode(vae: AutoencoderKL, x: torch.Tensor, sample: bool = False, generator=None):
    """Scaled latents of ``x`` (the posterior mode, or a sample from ``generator``)."""
    with torch.no_grad():
        return vae.encode_latents(x, generator, sample=sample)


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _latent_cfg(tmp_path, **latent):
    return tiny_config(
        tmp_path / "run", model=LATENT_UNET, latent=LatentConfig(enabled=True, **latent),
        data=DataConfig(dataset="digits", size=8, batch_size=16), ema=EMAConfig(enabled=False),
    )  # fmt: skip


def test_encode_latents_is_scaled_posterior_mode():
    vae, x = _vae(), _digits(4).images
    with torch.no_grad():
        mode = vae.encode(x).mode()
    torch.testing.assert_close(encode(vae, x), 0.7 * mode)
    g1, g2 = (torch.Generator().manual_seed(5) for _ in range(2))
    torch.testing.assert_close(encode(vae, x, True, g1), encode(vae, x, True, g2))
    assert not torch.equal(encode(vae, x, True, torch.Generator().manual_seed(6)), encode(vae, x))


def test_latent_cache_round_trip(tmp_path, monkeypatch):
    vae, data = _vae(), _digits(10)
    path = tmp_path / "cache" / "latents.safetensors"
    cfg = LatentConfig(enabled=True, cache_path=str(path), encode_batch_size=3)
    first = build_latent_dataset(vae, data, cfg)
    assert path.is_file() and not list(path.parent.glob(".*tmp*"))  # renamed, no temp left
    assert first.images.shape == (10, 4, 4, 4)
    torch.testing.assert_close(first.images, encode(vae, data.images))  # batching exact
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
    save_vae(tmp_path / VAE_FILE, vae)
    loaded = load_vae(tmp_path / VAE_FILE)
    assert loaded.config == VAE_CFG and not any(p.requires_grad for p in loaded.parameters())
    assert not loaded.training
    torch.testing.assert_close(encode(loaded, x), encode(vae, x))
    # the run directory holding vae.safetensors; its stored config over any preset
    assert load_vae(tmp_path, preset="small").config == VAE_CFG
    assert load_vae(tmp_path, scale_factor=0.25).config.scale_factor == 0.25
    frozen = load_frozen_vae(LatentConfig(enabled=True, vae_path=str(tmp_path)))
    torch.testing.assert_close(encode(frozen, x), encode(vae, x))
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
    with torch.no_grad():
        torch.testing.assert_close(encode(ldm, x3), 0.5 * tiny.encode(x3).mode())
    with pytest.raises(
        ValueError,
        match=r"latent.vae_path: .*ldm.safetensors \(for the vae preset 'small'\) does not match",
    ):
        load_frozen_vae(replace(cfg, vae_preset="small"))
    with pytest.raises(ValueError, match="latent.vae_path"):
        load_frozen_vae(LatentConfig(enabled=True))


def test_trainer_latent_steps_reduce_loss_on_fixed_batch(tmp_path):
    cfg = replace(_latent_cfg(tmp_path), optim=OptimConfig(lr=3e-3))
    trainer = Trainer(cfg, dataset=_digits(16), vae=_vae())
    assert trainer.sample_shape == (4, 4, 4)
    z = trainer.dataset.images  # cached latents = the fixed batch (dataset size == batch size)
    labels = trainer.dataset.labels
    sigma, noise = trainer.loss_fn.draw(16, (4, 4, 4), generator=torch.Generator().manual_seed(1))

    def loss() -> torch.Tensor:
        cond = {"y": labels}
        return trainer.loss_fn(trainer.denoiser, z, cond, sigma=sigma, noise=noise).mean()

    with torch.no_grad():
        before = float(loss())
    for _ in range(15):  # the trainer's model + optimiser on one fixed batch and draw
        trainer.optimizer.zero_grad()
        loss().backward()
        trainer.optimizer.step()
    with torch.no_grad():
        assert float(loss()) < 0.7 * before
    assert trainer.train_step()["loss"] > 0 and trainer.step == 1  # its own step on the cache
    images = trainer.decode(z[:2])
    assert images.shape == (2, 1, 8, 8) and images.abs().max() <= 1
    grid = trainer.save_samples(tmp_path / "grid.png", per_class=1)
    assert grid is not None and grid.is_file()


def test_trainer_encodes_per_batch_without_cache(tmp_path):
    vae, data = _vae(), _digits(16)
    trainer = Trainer(_latent_cfg(tmp_path, cache=False), dataset=data, vae=vae)
    assert trainer.dataset is data and trainer.sample_shape == (4, 4, 4)
    x, _ = trainer._load(torch.arange(3))
    torch.testing.assert_close(x, encode(vae, data.images[:3]))
    assert trainer.train_step()["loss"] > 0


def test_latent_config_errors(tmp_path):
    with pytest.raises(ValueError, match="latent.vae_pth: unknown key"):
        build_config("diffusion", None, ["latent.vae_pth=x.safetensors"])
    with pytest.raises(ValueError, match="latent.cache: expected true/false"):
        build_config("diffusion", None, ["latent.cache=maybe"])
    with pytest.raises(ValueError, match="latent.encode_batch_size must be >= 1"):
        build_config("diffusion", None, ["latent.encode_batch_size=0"])
    with pytest.raises(ValueError, match="latent.vae_scale_factor must be > 0"):
        build_config("diffusion", None, ["latent.vae_scale_factor=0"])
    with pytest.raises(ValueError, match="latent.vae_path"):
        Trainer(_latent_cfg(tmp_path), dataset=_digits(16))
    bad = replace(_latent_cfg(tmp_path), model=replace(LATENT_UNET, in_channels=3))
    with pytest.raises(ValueError, match="model.in_channels=3 does not match the latent"):
        Trainer(bad, dataset=_digits(16), vae=_vae())
    with pytest.raises(ValueError, match="latent.enabled is false"):
        Trainer(tiny_config(tmp_path), dataset=_digits(16), vae=_vae())


def _ae_config(tmp_path: Path, **kw) -> AutoencoderRunConfig:
    """A ``task: autoencoder`` run of VAE_CFG on the digits (seed 0: _vae()'s initial weights)."""
    fields = dict(
        model=VAE_CFG, data=DataConfig(dataset="digits", size=8, batch_size=16),
        optim=OptimConfig(lr=2e-3, betas=(0.5, 0.9), grad_clip=None), steps=25, log_every=5,
        device="cpu", progress=False, out_dir=str(tmp_path / "ae"),
    )  # fmt: skip
    return AutoencoderRunConfig(**(fields | kw))


def test_autoencoder_training_reduces_reconstruction_loss(tmp_path):
    images = _digits(16).images
    untrained = _vae()  # the run's initial weights (torch.manual_seed(cfg.seed))

    def l1(vae: AutoencoderKL) -> float:
        with torch.no_grad():
            return float((vae(images, sample_posterior=False)[0] - images).abs().mean())

    before = l1(untrained)
    out = train_autoencoder(_ae_config(tmp_path))
    records = _rows(out / "log.csv")
    assert [int(r["step"]) for r in records] == [5, 10, 15, 20, 25]
    assert records[0]["rec_loss"] != "" and float(records[-1]["kl_loss"]) > 0
    vae = load_vae(out)
    assert l1(vae) < 0.6 * before
    scale = latent_scale_factor(vae, images)
    with torch.no_grad():
        assert float((vae.encode(images).mode() * scale).std()) == pytest.approx(1.0, rel=1e-4)
    # the written VAE carries the scale of all its training images (scale_by_std)
    everything = load_digits_tensor(8)[0]
    assert vae.config.scale_factor == pytest.approx(latent_scale_factor(vae, everything))
    assert json.loads((out / "summary.json").read_text())["scale_factor"] == pytest.approx(
        vae.config.scale_factor
    )


def test_autoencoder_training_with_patchgan(tmp_path):
    loss = AutoencoderLossConfig(
        perceptual_weight=0.0, disc_start=2, disc_num_layers=1, disc_ndf=8, disc_loss="vanilla"
    )
    cfg = _ae_config(tmp_path, data=DataConfig(dataset="digits", size=8, batch_size=4),
                     steps=4, log_every=1, loss=loss)  # fmt: skip
    records = _rows(train_autoencoder(cfg) / "log.csv")
    assert records[1]["d_loss"] == "" and records[1]["g_loss"] == ""  # before disc_start
    assert all(records[3][k] != "" for k in ("d_loss", "g_loss", "d_weight"))
    folder = tmp_path / "rgb-images"
    folder.mkdir()
    for i in range(4):
        Image.new("RGB", (8, 8), (60 * i, 0, 0)).save(folder / f"{i}.png")
    rgb = _ae_config(tmp_path, data=DataConfig(dataset="folder", path=str(folder), size=8,
                     batch_size=4), out_dir=str(tmp_path / "rgb"))  # fmt: skip
    with pytest.raises(ValueError, match="'folder' has 3 channels, model.in_channels=1"):
        train_autoencoder(rgb)
    with pytest.raises(ValueError, match="regularizer.weight must be >= 0"):
        RegularizerConfig(weight=-1.0)
    with pytest.raises(ValueError, match="regularizer.weight must be >= 0"):
        build_config("autoencoder", None, ["regularizer.weight=-1"])
