"""Both training loops for a few steps, the checkpoint files, and ``genmodels vq-sample``."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from genmodels.cli import vq_sample
from genmodels.configs.vqgan import TINY
from genmodels.models.gpt import GPT, GPTConfig
from genmodels.models.vqgan import VQModel
from genmodels.training.transformer_train import (
    TransformerMeta,
    TransformerTrainConfig,
    encode_codes,
    load_transformer,
    sample_images,
    save_transformer,
    train_transformer,
)
from genmodels.training.vqgan_loss import VQGANLossConfig
from genmodels.training.vqgan_train import VQGANTrainConfig, load_vqgan, save_vqgan, train_vqgan


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    x = torch.rand(24, 1, 16, 16) * 2 - 1
    labels = torch.arange(24) % 3
    vq = VQModel(replace(TINY, quantizer="ema", kmeans_init=True, dead_code_steps=1))
    loss = VQGANLossConfig(
        disc_start=2, perceptual_weight=0.0, disc_in_channels=1, disc_num_layers=2, disc_ndf=8
    )
    cfg = VQGANTrainConfig(steps=4, batch_size=8, log_every=2, loss=loss, bf16=True)
    records = train_vqgan(vq, x, cfg)
    assert [r["step"] for r in records] == [2, 4]
    assert "d_loss" not in records[0] and "d_weight" in records[1]  # discriminator from step 2
    assert all(np.isfinite(r["rec_loss"]) and 0 < r["usage"] <= 1 for r in records)
    codes = encode_codes(vq, x)
    assert codes.shape == (24, 4, 4)
    gcfg = GPTConfig(vocab_size=TINY.n_embed + 3, block_size=16, n_layer=1, n_head=2, n_embd=32)
    meta = TransformerMeta(gcfg, TINY.n_embed, 3, (4, 4), permuter="z_curve")
    gpt = GPT(gcfg)
    tcfg = TransformerTrainConfig(steps=6, batch_size=8, lr=3e-3, warmup_steps=2, log_every=3)
    trecords = train_transformer(gpt, meta, codes, labels, tcfg)
    assert len(trecords) == 2 and trecords[1]["loss"] < np.log(gcfg.vocab_size) + 0.5
    out = tmp_path_factory.mktemp("vq")
    save_vqgan(out, vq)
    save_transformer(out, gpt, meta)
    return out


def _run(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    vq_sample.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["vq-sample", *argv])
    return args.func(args)


def test_checkpoint_round_trip(ckpt: Path) -> None:
    vq, (gpt, meta) = load_vqgan(ckpt), load_transformer(ckpt)
    assert meta.permuter == "z_curve" and meta.grid == (4, 4) and meta.n_classes == 3
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
    assert [f.name for f in files] == ["000010.png", "000011.png"]
    img = Image.open(files[1])
    assert img.size == (32, 32) and img.mode == "L"
    params = json.loads(img.text["parameters"])
    assert params == {
        "ckpt": str(ckpt), "class": 1, "temperature": 0.8, "top_k": None, "top_p": 0.9, "seed": 11
    }  # fmt: skip
    single = tmp_path / "single"
    _run(*argv, "--n", "1", "--seed", "11", "--outdir", str(single), "--scale", "2")
    same = np.asarray(Image.open(single / "000011.png"))
    assert np.array_equal(same, np.asarray(img))  # image i of a batch == a single run


def test_vq_sample_bad_input(ckpt: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="class-conditional: pass --class 0..2"):
        _run("--ckpt", str(ckpt), "--outdir", str(tmp_path))
    with pytest.raises(ValueError, match=r"class labels must lie in \[0, 3\)"):
        _run("--ckpt", str(ckpt), "--class", "3", "--outdir", str(tmp_path))
    with pytest.raises(ValueError, match="not a VQGAN checkpoint directory"):
        _run("--ckpt", str(tmp_path / "missing"), "--class", "0")
