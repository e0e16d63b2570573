"""``genmodels sample``: images from runs trained with the trainer (class, text, latent)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from genmodels.checkpoints.vae import save_vae as save_autoencoder_kl
from genmodels.cli.main import main
from genmodels.configs.autoencoder import AutoencoderConfig
from genmodels.configs.conditioning import LatentConfig, TextConfig
from genmodels.configs.unet import UNetConfig
from genmodels.data.digits import load_digits_tensor
from genmodels.data.tensor_dataset import ImageTensorDataset
from genmodels.models.autoencoder_kl import AutoencoderKL
from genmodels.pipelines.trained import load_run
from genmodels.training.config import DataConfig, EMAConfig
from genmodels.training.diffusion import Trainer
from tests.training.helpers import tiny_config


def _train(cfg) -> Trainer:
    trainer = Trainer(cfg)
    trainer.fit()
    return trainer


@pytest.fixture(scope="module")
def class_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("class") / "run"
    _train(tiny_config(out, steps=2, sample_steps=2))
    return out


def _png(path) -> tuple[np.ndarray, dict]:
    with Image.open(path) as im:
        return np.asarray(im), json.loads(im.text["parameters"])


def test_class_run_writes_pngs_with_parameters_and_per_seed_images(class_run, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    args = ["sample", str(class_run), "--class", "3", "--steps", "3", "--cfg", "2"]
    assert main([*args, "--n", "2", "--seed", "5", "--outdir", str(a), "--grid"]) == 0
    assert main([*args, "--n", "1", "--seed", "6", "--outdir", str(b)]) == 0
    pixels, params = _png(a / "00001-6.png")  # A1111 names: NNNNN-seed.png
    assert params["class"] == 3 and params["seed"] == 6 and params["weights"] == "ema"
    assert params["steps"] == 3 and params["cfg"] == 2.0 and params["scheduler"] == "karras"
    assert pixels.shape == (8, 8)  # the run's 8 px grey digits
    assert np.array_equal(pixels, _png(b / "00000-6.png")[0])  # batch of 2 == single run
    assert (a / "grid-00002.png").is_file()
    assert main([*args, "--n", "1", "--seed", "6", "--outdir", str(b)]) == 0  # the same again
    assert sorted(p.name for p in b.iterdir()) == ["00000-6.png", "00001-6.png"]  # no overwrite


def test_run_dir_resolves_to_newest_checkpoint_and_raw_weights_differ(class_run, tmp_path):
    ckpt = sorted((class_run / "checkpoints").iterdir())[-1]
    assert load_run(class_run).checkpoint == ckpt
    for weights in ("ema", "raw"):
        extra = ["--raw"] if weights == "raw" else []
        out = tmp_path / weights
        main(["sample", str(ckpt), "--n", "1", "--steps", "2", "--outdir", str(out), *extra])
        assert _png(out / "00000-0.png")[1]["weights"] == weights


def test_default_classes_in_turn(class_run, tmp_path):
    main(["sample", str(class_run), "--n", "12", "--steps", "1", "--outdir", str(tmp_path)])
    classes = [_png(tmp_path / f"{i:05d}-{i}.png")[1]["class"] for i in range(12)]
    assert classes == [i % 10 for i in range(12)]  # 11 classes = 10 digits + the null class


def test_text_run_reuses_the_training_contexts(tmp_path):
    """The run's random-weight tiny CLIP is rebuilt identically (fixed seed), so sampling sees
    the contexts the UNet was trained on."""
    unet = UNetConfig(
        in_channels=1, out_channels=1, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
        attention_resolutions=(2,), num_head_channels=32, context_dim=32,
    )  # fmt: skip
    cfg = tiny_config(
        tmp_path / "run", model=unet, text=TextConfig(encoder="tiny-sd1"), steps=1,
        data=DataConfig(dataset="digits", size=8, batch_size=4), ema=EMAConfig(enabled=False),
    )  # fmt: skip
    x, y = load_digits_tensor(8)
    data = ImageTensorDataset(x[:8], captions=[f"digit {int(i)}" for i in y[:8]])
    torch.manual_seed(123)  # the global RNG state must not matter
    trainer = Trainer(cfg, dataset=data)
    trainer.fit()
    torch.manual_seed(456)
    run = load_run(tmp_path / "run", use_ema=False)
    caption = data.captions[0]
    torch.testing.assert_close(run.text.lookup([caption]), trainer.text.lookup([caption]))
    out = tmp_path / "out"
    args = ["sample", str(tmp_path / "run"), "--raw", "--n", "1", "--steps", "2"]
    assert main([*args, "--prompt", caption, "--outdir", str(out)]) == 0
    assert _png(out / "00000-0.png")[1]["prompt"] == caption
    no_ema = ["sample", str(tmp_path / "run"), "--n", "1", "--steps", "1", "--prompt", caption]
    assert main([*no_ema, "--outdir", str(tmp_path / "no-ema")]) == 0  # falls back to raw
    assert _png(tmp_path / "no-ema" / "00000-0.png")[1]["weights"] == "raw"
    assert main([*args, "--outdir", str(out)]) == 2  # a text run needs --prompt
    assert main([*args, "--class", "1", "--outdir", str(out)]) == 2


def test_latent_run_decodes_through_its_vae(tmp_path):
    vae_cfg = AutoencoderConfig(
        ch=32, ch_mult=(1, 2), num_res_blocks=1, in_channels=1, out_ch=1, resolution=8,
        z_channels=4, embed_dim=4, scale_factor=0.7,
    )  # fmt: skip
    torch.manual_seed(0)
    vae_path = save_autoencoder_kl(tmp_path / "vae.safetensors", AutoencoderKL(vae_cfg).eval())
    unet = UNetConfig(
        in_channels=4, out_channels=4, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
        attention_resolutions=(), num_head_channels=32, num_classes=11,
    )  # fmt: skip
    cfg = tiny_config(
        tmp_path / "run", model=unet, steps=1, ema=EMAConfig(enabled=False),
        latent=LatentConfig(enabled=True, vae_path=str(vae_path)),
        data=DataConfig(dataset="digits", size=8, batch_size=8),
    )  # fmt: skip
    _train(cfg)
    run = load_run(tmp_path / "run", use_ema=False)
    assert run.sample_shape == (4, 4, 4) and run.vae is not None
    out = tmp_path / "out"
    assert main(["sample", str(tmp_path / "run"), "--raw", "--n", "1", "--steps", "2",
                 "--class", "1", "--outdir", str(out)]) == 0  # fmt: skip
    assert _png(out / "00000-0.png")[0].shape == (8, 8)  # decoded back to image space
    moved = tmp_path / "elsewhere.safetensors"
    vae_path.rename(moved)
    args = ["sample", str(tmp_path / "run"), "--raw", "--n", "1", "--steps", "1"]
    assert main([*args, "--outdir", str(out)]) == 2  # the run's VAE is gone: a clear error
    assert main([*args, "--vae", str(moved), "--outdir", str(out)]) == 0


def test_bad_inputs_are_clear_errors(class_run, tmp_path, capsys):
    def error(*args: str) -> str:
        assert main(["sample", *args, "--outdir", str(tmp_path)]) == 2
        return capsys.readouterr().err

    assert "not a training run" in error(str(tmp_path / "nothing"))
    assert "out of range: 0..9" in error(str(class_run), "--class", "10")
    assert "not text-conditional" in error(str(class_run), "--prompt", "a cat")
    assert "--n and --scale must be >= 1" in error(str(class_run), "--n", "0")
    assert "out of range" in error(str(class_run), "--class", "-1")
    assert "--scale 100000 is more than 4096" in error(str(class_run), "--scale", "100000")
    assert "more than the limit" in error(str(class_run), "--scale", "1000")  # 8 px x 1000
    assert "--cfg must be a finite number" in error(str(class_run), "--cfg", "nan")
    assert "--steps must be in [1, 10000]" in error(str(class_run), "--steps", "10000000")
    assert "--cache-interval must be >= 1" in error(str(class_run), "--cache-interval", "0")
    assert "--cache-depth must be >= 1" in error(str(class_run), "--cache-depth", "0")
    assert "--cfg-cutoff must be a finite" in error(str(class_run), "--cfg-cutoff", "-1")
    assert "below the UNet's 4 input blocks" in error(
        str(class_run), "--cache-interval", "2", "--cache-depth", "4"
    )
    assert not any(tmp_path.glob("*.png"))


def test_acceleration_flags_are_recorded_and_off_by_default(class_run, tmp_path):
    base = ["sample", str(class_run), "--class", "3", "--steps", "4", "--cfg", "2", "--n", "1"]
    runs = {
        "exact": [],
        "interval1": ["--cache-interval", "1", "--cache-depth", "2"],  # interval 1: no caching
        "cutoff0": ["--cfg-cutoff", "0"],
        "cached": ["--cache-interval", "2", "--cache-depth", "1", "--cfg-cutoff", "0.5"],
    }
    images = {}
    for name, extra in runs.items():
        assert main([*base, *extra, "--outdir", str(tmp_path / name)]) == 0
        images[name], params = _png(tmp_path / name / "00000-0.png")
        if name == "cached":
            assert params["cache_interval"] == 2 and params["cache_depth"] == 1
            assert params["cfg_cutoff"] == 0.5
        else:
            assert not {"cache_interval", "cache_depth", "cfg_cutoff"} & set(params)
    assert np.array_equal(images["interval1"], images["exact"])
    assert np.array_equal(images["cutoff0"], images["exact"])
