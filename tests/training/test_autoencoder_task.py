"""``genmodels train`` with ``task: autoencoder``: the files of a run, falling reconstruction
loss, key/type errors, the autoencoder-digits preset (= benchmarks/ldm_digits.py stage 1) and the
written VAE as the frozen VAE of latent diffusion (tiny models on 8x8 digits)."""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from genmodels.cli.main import main
from genmodels.configs.autoencoder_train import (
    AUTOENCODER_TRAIN_PRESETS,
    get_autoencoder_train_config,
)
from genmodels.configs.train import LDM_DIGITS_AUTOENCODER
from genmodels.configs.unet import UNetConfig
from genmodels.data.digits import load_digits_tensor
from genmodels.models.autoencoder_kl import AutoencoderKL
from genmodels.training.autoencoder_run import (
    AutoencoderRunConfig,
    build_autoencoder_config,
    dump_autoencoder_config,
    load_autoencoder_config,
)
from genmodels.training.autoencoder_train import (
    AutoencoderTrainConfig,
    load_autoencoder_kl,
    train_autoencoder_kl,
)
from genmodels.training.config import DataConfig, EMAConfig, LatentConfig
from genmodels.training.latents import encode_images, load_frozen_vae
from genmodels.training.trainer import Trainer
from tests.training.helpers import tiny_config

# f2, 8 -> 16 channels, 8x8x1 digits -> 4x4x2 latents
TINY_MODEL = {
    "ch": 8, "ch_mult": [1, 2], "num_res_blocks": 1, "in_channels": 1, "out_ch": 1,
    "resolution": 8, "z_channels": 2, "embed_dim": 2, "num_groups": 4,
}  # fmt: skip
TINY_RUN = {
    "task": "autoencoder",
    "model": TINY_MODEL,
    "data": {"dataset": "digits", "size": 8},
    "train": {"steps": 30, "batch_size": 16, "lr": 3e-3, "log_every": 10},
    "sample_every": 10,
    "ckpt_every": 20,
    "grid_images": 4,
    "device": "cpu",
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The output directory of one tiny run through the CLI entry point."""
    root = tmp_path_factory.mktemp("ae")
    path = root / "run.yaml"
    path.write_text(yaml.safe_dump(TINY_RUN))
    assert main(["train", str(path), f"out_dir={root / 'out'}"]) == 0
    return root / "out"


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_run_writes_its_files_and_reduces_the_reconstruction_loss(trained: Path) -> None:
    cfg = load_autoencoder_config(trained / "config.yaml")
    assert cfg == build_autoencoder_config(
        {k: v for k, v in TINY_RUN.items() if k != "task"}, [f"out_dir={trained}"]
    )
    assert yaml.safe_load((trained / "config.yaml").read_text())["task"] == "autoencoder"
    rows = _rows(trained / "log.csv")
    assert [int(r["step"]) for r in rows] == [10, 20, 30]
    assert float(rows[-1]["rec_loss"]) < 0.8 * float(rows[0]["rec_loss"])
    assert rows[0]["g_loss"] == ""  # no GAN by default
    grids = sorted(p.name for p in (trained / "samples").glob("*.png"))
    assert grids == ["recon-00000010.png", "recon-00000020.png", "recon-00000030.png"]
    with Image.open(trained / "samples" / grids[-1]) as img:  # 2 rows of 4, 1 px pad, x4
        assert img.size == (4 * (4 * 9 + 1), 4 * (2 * 9 + 1))
    assert not list(trained.glob(".*tmp*"))  # atomic writes leave no temporary files

    summary = json.loads((trained / "summary.json").read_text())
    assert summary["steps"] == 30 and summary["final"]["step"] == 30
    vae = load_autoencoder_kl(trained / "vae.safetensors")
    assert vae.config == replace(cfg.model, scale_factor=summary["scale_factor"])
    images = load_digits_tensor(8)[0][:256]
    torch.manual_seed(0)
    untrained = AutoencoderKL(cfg.model).eval()

    def l1(model: AutoencoderKL) -> float:
        with torch.no_grad():
            return float((model(images, sample_posterior=False)[0] - images).abs().mean())

    assert l1(vae) < 0.7 * l1(untrained)


def test_written_vae_is_the_frozen_vae_of_latent_training(trained: Path, tmp_path: Path) -> None:
    unet = UNetConfig(
        in_channels=2, out_channels=2, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
        attention_resolutions=(), num_head_channels=32, num_classes=11,
    )  # fmt: skip
    for vae_path in (trained / "vae.safetensors", trained):  # the file or the run directory
        cfg = tiny_config(
            tmp_path / "ldm", model=unet, ema=EMAConfig(enabled=False),
            data=DataConfig(dataset="digits", size=8, batch_size=16),
            latent=LatentConfig(enabled=True, vae_path=str(vae_path)),
        )  # fmt: skip
        trainer = Trainer(cfg)
        assert trainer.sample_shape == (2, 4, 4)
        assert trainer.train_step()["loss"] > 0
    z = trainer.dataset.images  # cached latents, scaled by the run's 1 / std
    assert abs(float(z.std()) - 1.0) < 1e-3
    missing = LatentConfig(enabled=True, vae_path=str(tmp_path))  # a directory without a VAE
    with pytest.raises(ValueError, match="latent.vae_path: .*vae.safetensors does not exist"):
        load_frozen_vae(missing)


def test_gan_terms_via_task_override(tmp_path: Path) -> None:
    model = [f"model.{k}={json.dumps(v)}" for k, v in TINY_MODEL.items()]
    loss = ["disc_factor=1.0", "disc_start=2", "disc_loss=vanilla", "disc_num_layers=1",
            "disc_ndf=8", "disc_weight=0.5"]  # fmt: skip
    args = ["train", "task=autoencoder", *model, *[f"train.loss.{x}" for x in loss],
            "train.steps=4", "train.batch_size=8", "train.log_every=2", "device=cpu",
            f"out_dir={tmp_path}"]  # fmt: skip
    assert main(args) == 0
    rows = _rows(tmp_path / "log.csv")
    assert [int(r["step"]) for r in rows] == [2, 4]
    assert rows[0]["d_loss"] == "" and float(rows[1]["d_weight"]) > 0  # GAN from step 2
    assert float(rows[1]["d_loss"]) > 0 and rows[1]["g_loss"] != ""
    cfg = load_autoencoder_config(tmp_path / "config.yaml")
    assert cfg.train.loss.disc_loss == "vanilla" and cfg.train.loss.disc_in_channels == 1


def test_resume_from_a_checkpoint_equals_the_uninterrupted_run(tmp_path: Path) -> None:
    """With the GAN on from step 2: a run resumed from its step-4 checkpoint (discriminator,
    both Adams, the batch/posterior generator, RNG) ends with the same weights."""
    model = [f"model.{k}={json.dumps(v)}" for k, v in TINY_MODEL.items()]
    loss = ["disc_factor=1.0", "disc_start=2", "disc_num_layers=1", "disc_ndf=8"]
    common = ["train", "task=autoencoder", *model, *[f"train.loss.{x}" for x in loss],
              "train.steps=8", "train.batch_size=8", "train.log_every=2", "ckpt_every=4",
              "keep_last=0", "device=cpu"]  # fmt: skip
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert main([*common, f"out_dir={full}"]) == 0
    assert sorted(p.name for p in (full / "checkpoints").iterdir()) == ["step-00000004"]
    # the interrupted run: its out_dir as it was right after the step-4 checkpoint
    (cut / "checkpoints").mkdir(parents=True)
    shutil.copytree(full / "checkpoints" / "step-00000004", cut / "checkpoints" / "step-00000004")
    rows = _rows(full / "log.csv")
    with (cut / "log.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows[:2])  # steps 2 and 4
    assert main([*common, f"out_dir={cut}", "--resume"]) == 0
    a, b = load_file(full / "vae.safetensors"), load_file(cut / "vae.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["step"] for r in _rows(cut / "log.csv")] == ["2", "4", "6", "8"]
    fresh = tmp_path / "fresh"  # --resume without a checkpoint: a fresh run
    assert main([*common, f"out_dir={fresh}", "--resume"]) == 0
    c = load_file(fresh / "vae.safetensors")
    assert all(torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lrr=1", "train.lrr: unknown key"),
        ("train.loss.disc_strat=3", "train.loss.disc_strat: unknown key"),
        ("model.chh=3", "model.chh: unknown key"),
        ("scale_by_sd=false", "scale_by_sd: unknown key"),
        ("train.steps=many", "train.steps: expected an integer"),
        ("train.kl_weight=lots", "train.kl_weight: expected a number"),
        ("model.ch_mult=[1, x]", r"model.ch_mult\[1\]: expected an integer"),
        ("data.dataset=mnist", "data.dataset: 'mnist' is not one of"),
        ("device=tpu", "device: 'tpu' is not one of"),
        ("model=nosuch", "model: unknown autoencoder preset 'nosuch'"),
        ("data.size=7", "data.size=7 is not divisible by model's factor 2"),
        ("sample_every=-1", "sample_every must be >= 0"),
        ("train.loss.disc_loss=wgan", "unknown disc_loss 'wgan'"),
    ],
)
def test_bad_keys_and_values_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_autoencoder_config(
            None, [override], base=get_autoencoder_train_config("autoencoder-digits")
        )


def test_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"task": "autoencoder", "trian": {"steps": 3}}))
    assert main(["train", str(path)]) == 2
    assert "trian: unknown key" in capsys.readouterr().err
    assert main(["train", "--preset", "autoencoder-digits", "task=vqgan"]) == 2
    assert "does not match preset 'autoencoder-digits'" in capsys.readouterr().err
    assert main(["train", "--preset", "no-such"]) == 2
    assert "autoencoder-digits" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(AUTOENCODER_TRAIN_PRESETS))
def test_preset_print_config_reads_back(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", "--preset", name, "--print-config", "model=digits"]) == 0
    path = tmp_path / "printed.yaml"
    path.write_text(capsys.readouterr().out)
    assert load_autoencoder_config(path) == get_autoencoder_train_config(name)
    assert dump_autoencoder_config(load_autoencoder_config(path)) == path.read_text()


def test_digits_preset_is_the_ldm_digits_stage_one(tmp_path: Path) -> None:
    # benchmarks/ldm_digits.py: seed 0, AutoencoderKL(LDM_DIGITS_AUTOENCODER), its train config
    preset = get_autoencoder_train_config("autoencoder-digits")
    assert preset.model == LDM_DIGITS_AUTOENCODER and preset.data.size == 8
    bench = AutoencoderTrainConfig(steps=300, batch_size=64, lr=2e-3, log_every=100)
    assert preset.train == replace(bench, loss=preset.train.loss)
    assert preset.train.loss == replace(bench.loss, disc_in_channels=1)
    args = ["train", "--preset", "autoencoder-digits", "train.steps=2", "device=cpu"]
    assert main([*args, f"out_dir={tmp_path}"]) == 0
    images = load_digits_tensor(8)[0]
    torch.manual_seed(0)
    ref = AutoencoderKL(LDM_DIGITS_AUTOENCODER)
    train_autoencoder_kl(ref, images, replace(bench, steps=2))
    ours = load_autoencoder_kl(tmp_path / "vae.safetensors")
    for key, value in ref.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value), key
    assert abs(float(encode_images(ours, images).std()) - 1.0) < 1e-3


def test_run_config_defaults_are_consistent() -> None:
    cfg = AutoencoderRunConfig()
    assert cfg.train.loss.disc_in_channels == cfg.model.out_ch == 1
    rgb = build_autoencoder_config({"model": "tiny", "data": {"dataset": "emoji", "size": 32}})
    assert rgb.model.in_channels == 3 and rgb.train.loss.disc_in_channels == 3
