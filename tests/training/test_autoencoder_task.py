"""``genmodels train`` with ``task: autoencoder``: the files of a run, falling reconstruction
loss, key/type errors (old-layout keys naming their new key), the autoencoder-digits preset
(stage 1 of latent diffusion on the digits) and the written VAE as the frozen VAE of latent
diffusion (tiny models on 8x8 digits)."""

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

from genmodels.checkpoints.vae import VAE_FILE, load_frozen_vae, load_vae
from genmodels.cli.main import main
from genmodels.configs.autoencoder import DIGITS as AE_DIGITS
from genmodels.configs.conditioning import LatentConfig
from genmodels.configs.unet import UNetConfig
from genmodels.data.digits import load_digits_tensor
from genmodels.models.autoencoder_kl import AutoencoderKL
from genmodels.training.autoencoder import train_autoencoder
from genmodels.training.autoencoder_loss import AutoencoderLossConfig
from genmodels.training.config import DataConfig, EMAConfig, OptimConfig
from genmodels.training.diffusion import Trainer
from genmodels.training.metrics import dataset_psnr, psnr
from genmodels.training.presets import PRESETS, get_preset
from genmodels.training.regularizers import RegularizerConfig
from genmodels.training.task_configs import AutoencoderRunConfig, dump_config, task_of
from genmodels.training.tasks import build_config, load_config
from tests.training.helpers import tiny_config

# f2, 8 -> 16 channels, 8x8x1 digits -> 4x4x2 latents
TINY_MODEL = {
    "ch": 8, "ch_mult": [1, 2], "num_res_blocks": 1, "in_channels": 1, "out_ch": 1,
    "resolution": 8, "z_channels": 2, "embed_dim": 2, "num_groups": 4,
}  # fmt: skip
TINY_RUN = {
    "task": "autoencoder",
    "model": TINY_MODEL,
    "data": {"dataset": "digits", "size": 8, "batch_size": 16},
    "optim": {"lr": 3e-3},
    "steps": 30,
    "log_every": 10,
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
    cfg = load_config(trained / "config.yaml")
    assert cfg == build_config("autoencoder", TINY_RUN, [f"out_dir={trained}"])
    assert isinstance(cfg, AutoencoderRunConfig) and task_of(cfg) == "autoencoder"
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
    # resumable checkpoints: every ckpt_every steps and at the end, the newest keep_last (2)
    ckpts = sorted(p.name for p in (trained / "checkpoints").iterdir())
    assert ckpts == ["step-00000020", "step-00000030"]
    for name in ckpts:
        files = {p.name for p in (trained / "checkpoints" / name).iterdir()}
        assert {"model.safetensors", "discriminator.safetensors", "state.pt",
                "manifest.json"} <= files  # fmt: skip

    summary = json.loads((trained / "summary.json").read_text())
    assert summary["steps"] == 30 and summary["final"]["rec_loss"] == pytest.approx(
        float(rows[-1]["rec_loss"])
    )  # the last log record
    vae = load_vae(trained / VAE_FILE)
    assert vae.config == replace(cfg.model, scale_factor=summary["scale_factor"])
    final = load_file(trained / "checkpoints" / "step-00000030" / "model.safetensors")
    assert all(torch.equal(v, final[k]) for k, v in vae.state_dict().items())
    everything = load_digits_tensor(8)[0]

    def reconstruct(x: torch.Tensor) -> torch.Tensor:
        return vae(x, sample_posterior=False)[0]

    assert summary["psnr_db"] == pytest.approx(dataset_psnr(reconstruct, everything), abs=1e-4)
    with torch.no_grad():  # the batched PSNR over the data is the PSNR of all of it at once
        whole = psnr(reconstruct(everything).clamp(-1, 1), everything)
    assert dataset_psnr(reconstruct, everything, batch_size=100) == pytest.approx(whole, abs=1e-3)
    images = everything[:256]
    torch.manual_seed(0)
    untrained = AutoencoderKL(cfg.model).eval()

    def l1(model: AutoencoderKL) -> float:
        with torch.no_grad():
            return float((model(images, sample_posterior=False)[0] - images).abs().mean())

    assert l1(vae) < 0.7 * l1(untrained)


def test_summary_names_the_step_of_its_final_record(trained: Path) -> None:
    summary = json.loads((trained / "summary.json").read_text())
    assert summary["final"]["step"] == 30


def test_written_vae_is_the_frozen_vae_of_latent_training(trained: Path, tmp_path: Path) -> None:
    unet = UNetConfig(
        in_channels=2, out_channels=2, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
        attention_resolutions=(), num_head_channels=32, num_classes=11,
    )  # fmt: skip
    for vae_path in (trained / VAE_FILE, trained):  # the file or the run directory
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
    args = ["train", "task=autoencoder", *model, *[f"loss.{x}" for x in loss],
            "steps=4", "data.batch_size=8", "log_every=2", "device=cpu",
            f"out_dir={tmp_path}"]  # fmt: skip
    assert main(args) == 0
    rows = _rows(tmp_path / "log.csv")
    assert [int(r["step"]) for r in rows] == [2, 4]
    assert rows[0]["d_loss"] == "" and float(rows[1]["d_weight"]) > 0  # GAN from step 2
    assert float(rows[1]["d_loss"]) > 0 and rows[1]["g_loss"] != ""
    cfg = load_config(tmp_path / "config.yaml")
    assert cfg.loss.disc_loss == "vanilla" and cfg.loss.disc_weight == 0.5
    assert cfg.loss.disc_in_channels is None  # None: the images' channels (1) ...
    disc = load_file(tmp_path / "checkpoints" / "step-00000004" / "discriminator.safetensors")
    assert disc["main.0.weight"].shape[1] == 1  # ... which the discriminator was built for


def test_resume_from_a_checkpoint_equals_the_uninterrupted_run(tmp_path: Path) -> None:
    """With the GAN on from step 2: a run resumed from its step-4 checkpoint (discriminator,
    both Adams, the batch/posterior generator, RNG) ends with the same weights."""
    model = [f"model.{k}={json.dumps(v)}" for k, v in TINY_MODEL.items()]
    loss = ["disc_factor=1.0", "disc_start=2", "disc_num_layers=1", "disc_ndf=8"]
    common = ["train", "task=autoencoder", *model, *[f"loss.{x}" for x in loss],
              "steps=8", "data.batch_size=8", "log_every=2", "ckpt_every=4",
              "keep_last=0", "device=cpu"]  # fmt: skip
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert main([*common, f"out_dir={full}"]) == 0
    ckpts = sorted(p.name for p in (full / "checkpoints").iterdir())
    assert ckpts == ["step-00000004", "step-00000008"]  # every 4 steps and the final one
    # the interrupted run: its out_dir as it was right after the step-4 checkpoint
    (cut / "checkpoints").mkdir(parents=True)
    shutil.copytree(full / "checkpoints" / "step-00000004", cut / "checkpoints" / "step-00000004")
    rows = _rows(full / "log.csv")
    with (cut / "log.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows[:2])  # steps 2 and 4
    assert main([*common, f"out_dir={cut}", "--resume"]) == 0
    a, b = load_file(full / VAE_FILE), load_file(cut / VAE_FILE)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    final = "checkpoints/step-00000008/discriminator.safetensors"
    da, db = load_file(full / final), load_file(cut / final)
    assert all(torch.equal(da[k], db[k]) for k in da)
    assert [r["step"] for r in _rows(cut / "log.csv")] == ["2", "4", "6", "8"]
    fresh = tmp_path / "fresh"  # --resume without a checkpoint: a fresh run
    assert main([*common, f"out_dir={fresh}", "--resume"]) == 0
    c = load_file(fresh / VAE_FILE)
    assert all(torch.equal(a[k], c[k]) for k in a)
    # a folder holding a run is refused without --resume / --overwrite
    assert main([*common, f"out_dir={fresh}"]) == 2
    assert main([*common, f"out_dir={fresh}", "--overwrite"]) == 0
    d = load_file(fresh / VAE_FILE)
    assert all(torch.equal(a[k], d[k]) for k in a)


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.lrr=1", "optim.lrr: unknown key"),
        ("loss.disc_strat=3", "loss.disc_strat: unknown key"),
        ("model.chh=3", "model.chh: unknown key"),
        ("scale_by_sd=false", "scale_by_sd: unknown key"),
        ("steps=many", "steps: expected an integer"),
        ("regularizer.weight=lots", "regularizer.weight: expected a number"),
        ("model.ch_mult=[1, x]", r"model.ch_mult\[1\]: expected an integer"),
        ("data.dataset=mnist", "data.dataset: 'mnist' is not one of"),
        ("device=tpu", "device: 'tpu' is not one of"),
        ("model=nosuch", "model: unknown autoencoder preset 'nosuch'"),
        ("data.size=7", "data.size=7 is not divisible by the model's factor 2"),
        ("sample_every=-1", "sample_every must be >= 0"),
        ("loss.disc_loss=wgan", "unknown disc_loss 'wgan'"),
        ("regularizer.weight=-1", "regularizer.weight must be >= 0"),
        ("regularizer.kind=vq", "regularizer.kind: the autoencoder task trains a KL"),
        ("optim.grad_accum=2", "optim.grad_accum must be 1 for the GAN autoencoder tasks"),
        (
            "loss.disc_in_channels=3",
            r"loss.disc_in_channels=3 must equal the images' channels \(1\)",
        ),
        ("grid_images=0", "grid_images must be >= 1"),
        # keys of the autoencoder layout before the one layout of every task: the new key named
        ("train.lr=1", "train.lr: this key moved .*; use optim.lr"),
        ("train.steps=3", "train.steps: this key moved .*; use steps"),
        ("train.batch_size=8", "train.batch_size: this key moved .*; use data.batch_size"),
        ("train.kl_weight=1e-6", "train.kl_weight: this key moved .*; use regularizer.weight"),
        (
            "train.loss.disc_start=3",
            "train.loss.disc_start: this key moved .*; use loss.disc_start",
        ),
    ],
)
def test_bad_keys_and_values_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_config("autoencoder", None, [override], preset="autoencoder-digits")


def test_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"task": "autoencoder", "trian": {"steps": 3}}))
    assert main(["train", str(path)]) == 2
    assert "trian: unknown key" in capsys.readouterr().err
    path.write_text(yaml.safe_dump({"task": "autoencoder", "train": {"kl_weight": 1e-6}}))
    assert main(["train", str(path)]) == 2
    assert "train.kl_weight: this key moved" in capsys.readouterr().err
    assert main(["train", "--preset", "autoencoder-digits", "task=vqgan"]) == 2
    assert "does not match preset 'autoencoder-digits'" in capsys.readouterr().err
    assert main(["train", "--preset", "no-such"]) == 2
    assert "autoencoder-digits" in capsys.readouterr().err


AUTOENCODER_PRESETS = sorted(k for k, v in PRESETS.items() if task_of(v) == "autoencoder")


@pytest.mark.parametrize("name", AUTOENCODER_PRESETS)
def test_preset_print_config_reads_back(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", "--preset", name, "--print-config", "model=digits"]) == 0
    path = tmp_path / "printed.yaml"
    path.write_text(capsys.readouterr().out)
    assert load_config(path) == get_preset(name)
    assert dump_config(load_config(path)) == path.read_text()


def test_digits_preset_is_the_ldm_digits_stage_one(tmp_path: Path) -> None:
    # stage 1 of latent diffusion on the digits (the digits-ldm preset reads its vae.safetensors):
    # the digits autoencoder, L1 + 1e-6 KL (no LPIPS, no GAN), 300 steps of 64 at lr 2e-3 with
    # Adam betas (0.5, 0.9), seed 0, latents scaled to unit std
    assert AUTOENCODER_PRESETS == ["autoencoder-digits"]
    preset = get_preset("autoencoder-digits")
    assert preset.model == AE_DIGITS and preset.data == DataConfig("digits", size=8, batch_size=64)
    assert preset.optim == OptimConfig(lr=2e-3, betas=(0.5, 0.9), grad_clip=None)
    assert (preset.steps, preset.log_every, preset.seed, preset.scale_by_std) == (300, 100, 0, True)
    assert preset.regularizer == RegularizerConfig(kind="kl", weight=1e-6)
    assert preset.loss == AutoencoderLossConfig(perceptual_weight=0.0, disc_factor=0.0)
    assert get_preset("digits-ldm").latent.vae_path == f"{preset.out_dir}/{VAE_FILE}"
    # the CLI run of the preset is the API run of its config
    args = ["train", "--preset", "autoencoder-digits", "steps=2", "device=cpu"]
    assert main([*args, f"out_dir={tmp_path / 'cli'}"]) == 0
    cfg = replace(preset, steps=2, device="cpu", out_dir=str(tmp_path / "api"))
    assert train_autoencoder(cfg) == tmp_path / "api"
    ours, ref = load_vae(tmp_path / "cli"), load_vae(tmp_path / "api")
    assert ours.config == ref.config
    for key, value in ref.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value), key
    images = load_digits_tensor(8)[0]
    with torch.no_grad():
        z = ours.encode_latents(images, sample=False)
    assert abs(float(z.std()) - 1.0) < 1e-3


def test_run_config_defaults_are_consistent() -> None:
    cfg = AutoencoderRunConfig()
    assert cfg.model.in_channels == cfg.model.out_ch == 1 and cfg.data.dataset == "digits"
    assert cfg.loss.disc_in_channels is None  # the images' channels
    assert cfg.optim.betas == (0.5, 0.9) and cfg.optim.grad_clip is None  # ldm's GAN Adam
    assert cfg.regularizer == RegularizerConfig(kind="kl", weight=1e-6)
    assert cfg.loss.perceptual_weight == 0.0 and cfg.loss.disc_factor == 0.0  # no LPIPS, no GAN
    assert build_config("autoencoder") == cfg
    rgb = build_config("autoencoder", {"model": "tiny", "data": {"dataset": "emoji", "size": 32}})
    assert rgb.model.in_channels == 3 and rgb.loss.disc_in_channels is None
    rgb_yaml = {"model": "tiny", "loss": {"disc_in_channels": 3}}
    assert build_config("autoencoder", rgb_yaml).loss.disc_in_channels == 3
    with pytest.raises(
        ValueError, match=r"disc_in_channels=1 must equal the images' channels \(3\)"
    ):
        build_config("autoencoder", rgb_yaml, ["loss.disc_in_channels=1"])
