"""Trainer: gradient accumulation, precisions, folder data, logs and sample grids."""

from __future__ import annotations

import csv
import sys
import types
from dataclasses import replace

import pytest
import torch
from PIL import Image

from genmodels.configs.unet import UNetConfig
from genmodels.data.tensor_dataset import ImageTensorDataset
from genmodels.training.config import DataConfig, EMAConfig, OptimConfig
from genmodels.training.diffusion import Trainer
from genmodels.training.logging import FIELDS
from genmodels.training.optim import make_optimizer
from genmodels.training.tb_events import read_scalars
from tests.training.helpers import TINY_UNET, tiny_config


def test_grad_accumulation_equals_one_big_batch(tmp_path):
    a = Trainer(tiny_config(tmp_path / "a", steps=2, optim=OptimConfig(grad_accum=1)))
    b = Trainer(tiny_config(tmp_path / "b", steps=2, optim=OptimConfig(grad_accum=4)))
    for _ in range(2):
        la, lb = a.train_step(), b.train_step()
        assert la["loss"] == pytest.approx(lb["loss"], rel=1e-5)
        assert la["grad_norm"] == pytest.approx(lb["grad_norm"], rel=1e-4)
    # atol: Adam's g / sqrt(v) turns rounding-level gradient differences of near-zero entries
    # into differences of a few % of one lr-sized (1e-3) update
    for pa, pb in zip(a.model.parameters(), b.model.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-4, atol=5e-5)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains(tmp_path, precision):
    t = Trainer(tiny_config(tmp_path, steps=3, precision=precision))
    out = t.fit()
    assert torch.isfinite(torch.tensor(out["loss"])) and out["grad_norm"] > 0
    assert all(p.dtype == torch.float32 for p in t.model.parameters())  # fp32 master weights
    assert t.optim.scaler.is_enabled() == (precision == "fp16")


def test_grad_clipping_and_lr_schedule(tmp_path):
    cfg = tiny_config(
        tmp_path, steps=3, optim=OptimConfig(lr=1e-2, grad_clip=1e-3, schedule="constant",
                                             warmup_steps=2)
    )  # fmt: skip
    t = Trainer(cfg)
    before = [p.detach().clone() for p in t.model.parameters()]
    first = t.train_step()
    assert first["lr"] == pytest.approx(5e-3)  # warm-up: (0 + 1) / 2
    assert t.train_step()["lr"] == pytest.approx(1e-2)
    after = list(t.model.parameters())
    # Adam's first update is lr * sign(g) whatever the clipping; check the norm was reported
    assert first["grad_norm"] > 1e-3
    assert any(not torch.equal(x, y) for x, y in zip(before, after))


def test_folder_run_writes_log_grid_and_checkpoint(tmp_path):
    data = tmp_path / "images"
    for cls, color in (("red", (255, 0, 0)), ("blue", (0, 0, 255))):
        for i in range(4):
            (data / cls).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (10, 10), color).save(data / cls / f"{i}.png")
    (data / "red" / "broken.webp").write_bytes(b"RIFF0000WEBPnot an image")
    model = UNetConfig(
        in_channels=3, out_channels=3, model_channels=32, channel_mult=(1, 2),
        num_res_blocks=1, attention_resolutions=(), num_head_channels=32, num_classes=3,
    )  # fmt: skip
    cfg = tiny_config(
        tmp_path / "run", model=model, steps=4, sample_every=4, sample_steps=2, log_every=2,
        data=DataConfig(dataset="folder", path=str(data), size=8, batch_size=4, num_workers=2,
                        crop="random", random_flip=True),
        ema=EMAConfig(kind="litema"),
    )  # fmt: skip
    with pytest.warns(UserWarning, match="skipping unreadable image .*broken.webp"):
        t = Trainer(cfg)
    t.fit()
    rows = list(csv.DictReader((tmp_path / "run" / "log.csv").open()))
    assert [r["step"] for r in rows] == ["2", "4"]
    assert float(rows[-1]["images_per_s"]) > 0
    assert float(rows[-1]["skipped_images"]) == 1  # the corrupt file, counted, not a crash
    grid = Image.open(tmp_path / "run" / "samples" / "step-00000004.png")
    # 2 classes x 8 samples at 8 px with 1 px gaps, enlarged 8x to 64 px per sample
    assert grid.size == (8 * (8 * 9 + 1), 8 * (2 * 9 + 1))
    assert (tmp_path / "run" / "checkpoints" / "step-00000004" / "state.pt").is_file()
    assert (tmp_path / "run" / "config.yaml").is_file()


def test_batch_must_split_over_accumulation():
    with pytest.raises(ValueError, match="divisible by optim.grad_accum"):
        tiny_config("x", optim=OptimConfig(grad_accum=3))


def test_csv_and_tensorboard_scalars_without_the_tensorboard_package(tmp_path):
    Trainer(tiny_config(tmp_path, steps=4, ckpt_every=2)).fit()
    rows = list(csv.DictReader((tmp_path / "log.csv").open()))
    assert tuple(rows[0]) == FIELDS and [r["step"] for r in rows] == ["1", "2", "3", "4"]
    (events,) = (tmp_path / "tensorboard").glob("events.out.tfevents.*")
    scalars = read_scalars(events)  # checks the TFRecord CRCs too
    tags = {tag for _, tag, _ in scalars}
    assert tags == {"train/loss", "train/lr", "train/grad_norm", "train/images_per_s"}
    assert sorted({step for step, tag, _ in scalars if tag == "train/loss"}) == [1, 2, 3, 4]
    loss = {step: v for step, tag, v in scalars if tag == "train/loss"}
    assert loss[4] == pytest.approx(float(rows[-1]["loss"]), rel=1e-6)
    # resumed from step 2: the CSV keeps each step once (rows 3, 4 are logged again)
    again = Trainer(tiny_config(tmp_path, steps=4))
    assert again.resume(tmp_path / "checkpoints" / "step-00000002")
    again.fit()
    rows = list(csv.DictReader((tmp_path / "log.csv").open()))
    assert [r["step"] for r in rows] == ["1", "2", "3", "4"]


def test_adamw8bit_needs_bitsandbytes(monkeypatch):
    params = [torch.nn.Parameter(torch.zeros(2))]
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import fails
    with pytest.raises(ValueError, match=r"needs the bitsandbytes package.*pip install"):
        make_optimizer(params, OptimConfig(name="adamw8bit"))
    fake = types.ModuleType("bitsandbytes")
    fake.optim = types.SimpleNamespace(AdamW8bit=torch.optim.Adam)  # stands in for AdamW8bit
    monkeypatch.setitem(sys.modules, "bitsandbytes", fake)
    opt = make_optimizer(params, OptimConfig(name="adamw8bit", lr=3e-4, weight_decay=0.1))
    assert type(opt) is torch.optim.Adam and opt.defaults["weight_decay"] == 0.1
    assert type(make_optimizer(params, OptimConfig())) is torch.optim.AdamW


def test_class_conditional_model_needs_labels(tmp_path):
    for i in range(2):
        Image.new("RGB", (8, 8), (i * 255, 0, 0)).save(tmp_path / f"{i}.png")
    folder = DataConfig(dataset="folder", path=str(tmp_path), size=8, batch_size=2)
    model = UNetConfig(
        in_channels=3, out_channels=3, model_channels=32, channel_mult=(1,), num_res_blocks=1,
        attention_resolutions=(), num_head_channels=32, num_classes=3,
    )  # fmt: skip
    with pytest.raises(ValueError, match="unlabelled images .*class sub-folder"):
        Trainer(tiny_config(tmp_path / "a", model=model, data=folder))
    few = replace(TINY_UNET, num_classes=5)
    with pytest.raises(ValueError, match="has label 9.*at least 11"):
        Trainer(tiny_config(tmp_path / "b", model=few))
    x = torch.zeros(8, 1, 8, 8)
    with pytest.raises(ValueError, match="has no class labels"):
        Trainer(tiny_config(tmp_path / "c"), dataset=ImageTensorDataset(x))


def test_gradient_checkpointing_gives_the_same_step(tmp_path):
    plain = Trainer(tiny_config(tmp_path / "a", steps=1))
    ckpt = Trainer(
        tiny_config(tmp_path / "b", steps=1, model=replace(TINY_UNET, use_checkpoint=True))
    )
    a, b = plain.train_step(), ckpt.train_step()
    assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5)
    for pa, pb in zip(plain.model.parameters(), ckpt.model.parameters()):
        torch.testing.assert_close(pa, pb)
