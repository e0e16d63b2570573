"""Both training tasks for a few steps, their run files, and ``genmodels vq-sample``."""

from __future__ import annotations

import argparse
import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from genmodels.checkpoints.runs import load_transformer, load_vqgan, save_vqgan
from genmodels.cli import vq_sample
from genmodels.configs.vqgan import TINY
from genmodels.data.digits import load_digits_tensor
from genmodels.models.gpt import GPTConfig
from genmodels.models.net2net import TransformerMeta, encode_codes, make_cond_image, make_prefix
from genmodels.models.vqgan import VQModel
from genmodels.pipelines.vq_transformer import load_cond_stage, sample_images
from genmodels.training.autoencoder_loss import AutoencoderLossConfig
from genmodels.training.config import DataConfig
from genmodels.training.task_configs import GPTSizes, TransformerRunConfig, VQGANRunConfig
from genmodels.training.transformer import train_transformer
from genmodels.training.vqgan import train_vqgan

DIGITS_16 = DataConfig(dataset="digits", size=16, batch_size=8)  # 10 classes, 16 px grey
_GPT_OPTIM = TransformerRunConfig().optim


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("vq")
    loss = AutoencoderLossConfig(
        disc_start=2, perceptual_weight=0.0, disc_in_channels=1, disc_num_layers=2, disc_ndf=8
    )
    cfg = VQGANRunConfig(
        model=replace(TINY, quantizer="ema", kmeans_init=True, dead_code_steps=1),
        data=DIGITS_16,
        loss=loss,
        precision="bf16",
        steps=4,
        log_every=2,
        out_dir=str(out),
        device="cpu",
        progress=False,
    )
    assert train_vqgan(cfg) == out
    records = _rows(out / "log.csv")
    assert [int(r["step"]) for r in records] == [2, 4]
    # discriminator from step 2: no GAN terms in the first window, both in the second
    assert records[0]["d_loss"] == "" and records[0]["d_weight"] == ""
    assert records[1]["d_loss"] != "" and records[1]["d_weight"] != ""
    assert all(np.isfinite(float(r["rec_loss"])) and 0 < float(r["usage"]) <= 1 for r in records)
    codes = encode_codes(load_vqgan(out), load_digits_tensor(16)[0][:24])
    assert codes.shape == (24, 4, 4)
    tcfg = TransformerRunConfig(
        model=GPTSizes(n_layer=1, n_head=2, n_embd=32),
        data=DIGITS_16,
        optim=replace(_GPT_OPTIM, lr=3e-3, warmup_steps=2),
        vqgan_dir=str(out),
        permuter="z_curve",
        n_classes=10,
        steps=6,
        log_every=3,
        device="cpu",
        progress=False,
    )
    assert train_transformer(tcfg) == out  # written beside the VQGAN (out_dir null)
    trecords = _rows(out / "transformer_log.csv")
    vocab = TINY.n_embed + 10
    assert len(trecords) == 2 and float(trecords[1]["loss"]) < np.log(vocab) + 0.5
    for name in ("vqgan", "transformer"):
        assert (out / f"{name}.safetensors").is_file() and (out / f"{name}.json").is_file()
    return out


def _run(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    vq_sample.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["vq-sample", *argv])
    return args.func(args)


def test_checkpoint_round_trip(ckpt: Path) -> None:
    vq, (gpt, meta) = load_vqgan(ckpt), load_transformer(ckpt)
    assert meta.permuter == "z_curve" and meta.grid == (4, 4) and meta.n_classes == 10
    assert (meta.gpt.vocab_size, meta.gpt.block_size) == (TINY.n_embed + 10, 16)
    assert json.loads((ckpt / "vqgan.json").read_text())["config"]["quantizer"] == "ema"
    labels = torch.tensor([0, 2])
    a = sample_images(vq, gpt, meta, labels, 2, seed=5, top_k=8)
    b = sample_images(vq, gpt, meta, labels[1:], 1, seed=6, top_k=8)  # sample 1 alone
    assert a.shape == (2, 1, 16, 16) and a.abs().max() <= 1
    torch.testing.assert_close(a[1:], b)


def test_vq_sample_writes_pngs_with_parameters(ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "s"
    argv = ["--ckpt", str(ckpt), "--class", "1", "--top-p", "0.9", "--temperature", "0.8"]
    assert _run(*argv, "--n", "2", "--seed", "10", "--outdir", str(out), "--scale", "2") == 0
    files = sorted(out.glob("*.png"))
    assert [f.name for f in files] == ["00000-10.png", "00001-11.png"]  # A1111: NNNNN-seed
    img = Image.open(files[1])
    assert img.size == (32, 32) and img.mode == "L"
    params = json.loads(img.text["parameters"])
    assert params == {
        "ckpt": str(ckpt), "class": 1, "temperature": 0.8, "top_k": None, "top_p": 0.9, "seed": 11,
        "size": 16, "cond_image": None,
    }  # fmt: skip
    single = tmp_path / "single"
    _run(*argv, "--n", "1", "--seed", "11", "--outdir", str(single), "--scale", "2")
    same = np.asarray(Image.open(single / "00000-11.png"))
    assert np.array_equal(same, np.asarray(img))  # image i of a batch == a single run


def test_vq_sample_bad_input(ckpt: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="class-conditional: pass --class 0..9"):
        _run("--ckpt", str(ckpt), "--outdir", str(tmp_path))
    with pytest.raises(ValueError, match=r"class labels must lie in \[0, 10\)"):
        _run("--ckpt", str(ckpt), "--class", "10", "--outdir", str(tmp_path))
    with pytest.raises(ValueError, match="not a VQGAN checkpoint directory"):
        _run("--ckpt", str(tmp_path / "missing"), "--class", "0")
    with pytest.raises(ValueError, match="cannot read --cond-image 'x.png'"):
        _run("--ckpt", str(ckpt), "--class", "0", "--cond-image", "x.png")  # checked first
    Image.new("RGB", (16, 16)).save(tmp_path / "x.png")
    with pytest.raises(ValueError, match="not image-conditional: --cond-image"):
        _run("--ckpt", str(ckpt), "--class", "0", "--cond-image", str(tmp_path / "x.png"))
    with pytest.raises(ValueError, match="more than the limit"):
        _run("--ckpt", str(ckpt), "--class", "0", "--scale", "100000")
    with pytest.raises(ValueError, match="--temperature must be a finite number"):
        _run("--ckpt", str(ckpt), "--class", "0", "--temperature", "nan")
    with pytest.raises(ValueError, match="sliding-window sampling needs raster order"):
        _run("--ckpt", str(ckpt), "--class", "0", "--size", "24", "--outdir", str(tmp_path))
    with pytest.raises(ValueError, match="below the training size 16"):
        _run("--ckpt", str(ckpt), "--class", "0", "--size", "8", "--outdir", str(tmp_path))


def test_bad_gpt_weights_name_the_file_and_key(ckpt: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("transformer.json", "vqgan.json", "vqgan.safetensors"):
        (bad / name).write_bytes((ckpt / name).read_bytes())
    sd = load_file(str(ckpt / "transformer.safetensors"))
    del sd["head.weight"]
    save_file(sd, str(bad / "transformer.safetensors"))
    with pytest.raises(ValueError, match=r"transformer.safetensors: .*missing keys: head\.weight"):
        load_transformer(bad)


def test_sliding_window_sampling_of_larger_images(ckpt: Path) -> None:
    vq, (gpt, meta) = load_vqgan(ckpt), load_transformer(ckpt)
    raster = replace(meta, permuter="identity")
    labels = torch.tensor([0, 2])
    big = sample_images(vq, gpt, raster, labels, 2, seed=5, top_k=8, size=24)  # 6x6 codes
    assert big.shape == (2, 1, 24, 24) and big.abs().max() <= 1
    single = sample_images(vq, gpt, raster, labels[1:], 1, seed=6, top_k=8, size=24)
    torch.testing.assert_close(big[1:], single)
    # at the training size the window covers the grid: plain (cached) sampling is used
    torch.testing.assert_close(
        sample_images(vq, gpt, raster, labels, 2, seed=5, size=16),
        sample_images(vq, gpt, raster, labels, 2, seed=5),
    )


def test_make_cond_image_by_hand() -> None:
    x = torch.arange(16.0).view(1, 1, 4, 4) / 15 * 2 - 1
    low = make_cond_image(x, "lowres", 2)
    torch.testing.assert_close(low, x.view(1, 1, 2, 2, 2, 2).mean((3, 5)))  # 2x2 block means
    torch.testing.assert_close(make_cond_image(x.repeat(1, 3, 1, 1), "lowres", 2, 1), low)
    assert make_cond_image(x, "lowres", 2, channels=3).shape == (1, 3, 2, 2)
    step = torch.ones(1, 1, 4, 4)
    step[..., :2] = -1  # a vertical edge between columns 1 and 2
    # Sobel: gx = 4 * (x[j+1] - x[j-1]) = 8 at columns 1 and 2 (replicate padding), 0 elsewhere;
    # the magnitude is scaled by its maximum to [0, 1], then to [-1, 1]
    expected = -torch.ones(1, 1, 4, 4)
    expected[..., 1:3] = 1.0
    torch.testing.assert_close(make_cond_image(step, "edges", 4), expected)
    torch.testing.assert_close(make_cond_image(step, "edges", 2), torch.zeros(1, 1, 2, 2))
    with pytest.raises(ValueError, match="unknown cond_image"):
        make_cond_image(x, "depth", 2)


def test_image_conditional_training_and_sampling(tmp_path: Path) -> None:
    torch.manual_seed(0)
    x = torch.rand(16, 1, 16, 16) * 2 - 1
    vq = VQModel(TINY).eval()
    vq_dir = save_vqgan(tmp_path / "vq", vq)  # an untrained first stage is enough here
    cond_codes = encode_codes(vq, make_cond_image(x, "lowres", 8))  # (16, 2, 2)
    n = TINY.n_embed
    gcfg = GPTConfig(vocab_size=2 * n, block_size=4 + 16 - 1, n_layer=1, n_head=2, n_embd=16)
    meta = TransformerMeta(
        gcfg, n, 0, (4, 4), cond_image="lowres", cond_size=8, cond_grid=(2, 2), cond_n_codes=n
    )
    assert TransformerMeta.from_dict(meta.to_dict()) == meta
    # the condition is the cond codes as tokens n_codes + c
    assert torch.equal(make_prefix(meta, None, 2, cond_codes[:2]), cond_codes[:2].view(2, 4) + n)
    with pytest.raises(ValueError, match=r"needs cond codes \(2, 2, 2\)"):
        make_prefix(meta, None, 2)
    tcfg = TransformerRunConfig(
        model=GPTSizes(n_layer=1, n_head=2, n_embd=16),
        data=replace(DIGITS_16, batch_size=4),
        optim=replace(_GPT_OPTIM, warmup_steps=1),
        vqgan_dir=str(vq_dir),
        n_classes=0,
        cond_image="lowres",  # 8 px copies of the 16 px digits, encoded by the first stage
        steps=2,
        log_every=2,
        device="cpu",
        progress=False,
    )
    assert train_transformer(tcfg) == vq_dir
    assert len(_rows(vq_dir / "transformer_log.csv")) == 1
    gpt, trained = load_transformer(vq_dir)
    assert trained == meta  # the token layout the task derived is the one above
    assert load_cond_stage(vq_dir, trained, vq) is vq  # the first stage encodes the condition
    a = sample_images(vq, gpt, meta, None, 2, seed=3, cond_images=x[:2])
    b = sample_images(vq, gpt, meta, None, 1, seed=4, cond_images=x[1:2])
    assert a.shape == (2, 1, 16, 16)
    torch.testing.assert_close(a[1:], b)
    with pytest.raises(ValueError, match="image-conditional: pass 2 cond_images"):
        sample_images(vq, gpt, meta, None, 2)
    with pytest.raises(ValueError, match="cond grid \\(2, 2\\) equal to the code grid"):
        sample_images(vq, gpt, meta, None, 2, cond_images=x[:2], size=24)
    with pytest.raises(ValueError, match="n_classes=0"):
        TransformerMeta(gcfg, n, 3, (4, 4), cond_image="lowres", cond_grid=(2, 2), cond_n_codes=n)
    with pytest.raises(ValueError, match="block_size 16 < 4 conditioning tokens"):
        replace(meta, gpt=GPTConfig(2 * n, 16, n_layer=1, n_head=2, n_embd=16))
