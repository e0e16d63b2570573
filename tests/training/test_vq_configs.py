"""VQ run configs: YAML round trips, key/type errors, keys of the older layout, and ``genmodels
train`` for both VQ stages followed by ``genmodels vq-sample`` on the result (tiny models on 8x8
digits)."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from genmodels.checkpoints.runs import load_transformer, load_vqgan
from genmodels.cli.main import main
from genmodels.configs.vqgan import TINY
from genmodels.training.autoencoder_loss import AutoencoderLossConfig
from genmodels.training.config import DataConfig
from genmodels.training.presets import PRESETS, get_preset
from genmodels.training.task_configs import (
    DiffusionRunConfig,
    GumbelTemperatureConfig,
    TransformerRunConfig,
    VQGANRunConfig,
    dump_config,
    task_of,
)
from genmodels.training.tasks import build_config, load_config
from genmodels.training.vqgan import gumbel_temperature, train_vqgan

VQ_PRESETS = sorted(n for n, c in PRESETS.items() if task_of(c) in ("vqgan", "transformer"))

# f2 on 8x8 digits -> 4x4 codes from 16 codes; a 1-layer PatchGAN from step 2.
TINY_VQGAN = {
    "task": "vqgan",
    "model": {
        "ch": 8,
        "ch_mult": [1, 2],
        "num_res_blocks": 1,
        "attn_resolutions": [],
        "in_channels": 1,
        "out_ch": 1,
        "resolution": 8,
        "z_channels": 4,
        "num_groups": 4,
        "n_embed": 16,
        "embed_dim": 4,
        "quantizer": "ema",
        "kmeans_init": True,
    },
    "data": {"dataset": "digits", "size": 8, "batch_size": 8},
    "loss": {
        "disc_start": 2,
        "perceptual_weight": 0.0,
        "disc_in_channels": 1,
        "disc_num_layers": 1,
        "disc_ndf": 8,
    },
    "steps": 4,
    "log_every": 2,
    "device": "cpu",
    "progress": False,
}


def _tiny_transformer(vq_dir: Path, out_dir: Path) -> dict:
    return {
        "task": "transformer",
        "vqgan_dir": str(vq_dir),
        "data": {"dataset": "digits", "size": 8, "batch_size": 8},
        "model": {"n_layer": 1, "n_head": 2, "n_embd": 16},
        "optim": {"warmup_steps": 1},
        "steps": 3,
        "log_every": 3,
        "permuter": "z_curve",
        "n_classes": 10,
        "out_dir": str(out_dir),
        "device": "cpu",
        "progress": False,
    }


def _log_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("name", VQ_PRESETS)
def test_preset_yaml_round_trip(name: str, tmp_path: Path) -> None:
    cfg = get_preset(name)
    path = tmp_path / "run.yaml"
    dump_config(cfg, path)
    assert load_config(path) == cfg
    assert yaml.safe_load(path.read_text())["task"] == (
        "vqgan" if "vqgan" in name else "transformer"
    )
    assert next(iter(yaml.safe_load(path.read_text()))) == "task"  # written first


def test_file_overrides_and_model_preset_name(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(TINY_VQGAN))
    cfg = load_config(path, ["optim.lr=5e-4", "model.n_embed=8"])
    assert isinstance(cfg, VQGANRunConfig)
    assert (cfg.optim.lr, cfg.model.n_embed, cfg.model.ch_mult) == (5e-4, 8, (1, 2))
    assert cfg.loss.disc_ndf == 8 and cfg.optim.betas == (0.5, 0.9)  # untouched defaults
    assert cfg.regularizer.kind == "vq" and cfg.regularizer.weight == 1.0
    # ``model: NAME`` is a VQGAN preset; later overrides refine it
    cfg = build_config("vqgan", {"model": "tiny"}, ["model.n_embed=8"])
    assert cfg.model.ch == TINY.ch and cfg.model.n_embed == 8
    # the file's keys merge over a preset base
    base = get_preset("transformer-digits")
    cfg = build_config("transformer", {"model": {"n_layer": 2}}, preset=base)
    assert isinstance(cfg, TransformerRunConfig)
    assert (cfg.model.n_layer, cfg.model.n_embd, cfg.steps) == (2, 128, base.steps)
    # ... and a preset given by name is the same base
    named = build_config("transformer", {"model": {"n_layer": 2}}, preset="transformer-digits")
    assert named == cfg


def test_keys_of_the_older_layout_name_their_new_key(tmp_path: Path) -> None:
    # a whole run file in the per-task layout before one layout (train: / gpt: sections)
    old = {k: v for k, v in TINY_VQGAN.items() if k not in ("steps", "log_every", "loss")}
    old["train"] = {"steps": 4, "batch_size": 8, "lr": 1e-3}
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump(old))
    with pytest.raises(ValueError, match=r"train\.batch_size: .*key moved.*use data\.batch_size"):
        load_config(path)
    gpt = {"task": "transformer", "gpt": {"n_layer": 2}}
    with pytest.raises(ValueError, match=r"gpt\.n_layer: this key moved.*use model\.n_layer$"):
        build_config("transformer", gpt)
    with pytest.raises(ValueError, match=r"loss\.codebook_weight: .*use regularizer\.weight"):
        build_config("vqgan", {"loss": {"codebook_weight": 2.0}})


@pytest.mark.parametrize(
    "task, override, message",
    [
        ("vqgan", "optim.lrr=1", "optim.lrr: unknown key"),
        ("vqgan", "loss.disc_strat=3", "loss.disc_strat: unknown key"),
        ("vqgan", "model.chh=3", "model.chh: unknown key"),
        ("vqgan", "steps=many", "steps: expected an integer"),
        ("vqgan", "model.ch_mult=[1, x]", "model.ch_mult[1]: expected an integer"),
        ("vqgan", "data.dataset=mnist", "data.dataset: 'mnist' is not one of"),
        ("vqgan", "model=nosuch", "unknown VQGAN preset 'nosuch'"),
        ("vqgan", "model.quantizer=kmeans", "unknown quantizer 'kmeans'"),
        ("vqgan", "loss.disc_in_channels=3", "loss.disc_in_channels=3 must equal"),
        ("vqgan", "data.size=10", "data.size=10 is not divisible"),
        ("vqgan", "regularizer.kind=kl", "a VQGAN's regulariser is its codebook"),
        ("vqgan", "regularizer.weight=-1", "regularizer.weight must be >= 0"),
        ("vqgan", "precision=fp8", "precision: 'fp8' is not one of"),
        ("transformer", "model.n_layer=2.5", "model.n_layer: expected an integer"),
        ("transformer", "permuter=hilbert", "permuter: unknown 'hilbert'"),
        ("transformer", "pkeep=2", "pkeep must be in [0, 1]"),
        ("transformer", "n_classes=-1", "n_classes must be >= 0"),
        ("transformer", "cond_image=depth", "cond_image: 'depth' does not match"),
        ("transformer", "cond_image=lowres", "cond_image='lowres' needs n_classes: 0"),
        ("transformer", "cond_size=8", "cond_size / cond_vqgan_dir need a cond_image"),
        ("vqgan", "gumbel_temperature.schedule=linear", "schedule: 'linear' is not one"),
        ("vqgan", "ckpt_every=-1", "ckpt_every must be >= 0"),
        ("vqgan", "keep_last=-2", "keep_last must be >= 0"),
        ("transformer", "ckpt_every=-1", "ckpt_every must be >= 0"),
        ("transformer", "keep_last=-1", "keep_last must be >= 0"),
        # keys of the per-task layouts before one layout name the key that replaced them
        ("vqgan", "train.lr=1e-4", "train.lr: this key moved .*; use optim.lr"),
        ("vqgan", "train.steps=3", "train.steps: this key moved .*; use steps"),
        ("vqgan", "train.bf16=true", "train.bf16: this key moved .*; use precision"),
        ("vqgan", "train.loss.disc_start=3", "train.loss.disc_start: .*; use loss.disc_start"),
        ("vqgan", "train.loss.codebook_weight=2", "; use regularizer.weight"),
        ("vqgan", "loss.codebook_weight=2", "use regularizer.weight"),
        ("vqgan", "train.gumbel_temperature.t_min=0.1", "; use gumbel_temperature.t_min"),
        ("transformer", "gpt.n_layer=2", "gpt.n_layer: this key moved .*; use model.n_layer"),
        ("transformer", "train.pkeep=0.5", "train.pkeep: this key moved .*; use pkeep"),
        ("transformer", "train.warmup_steps=5", "; use optim.warmup_steps"),
    ],
)
def test_bad_keys_and_values_name_the_key(task: str, override: str, message: str) -> None:
    message = message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")
    with pytest.raises(ValueError, match=message.replace(")", r"\)")):
        build_config(task, None, [override], preset=f"{task}-digits")


def test_task_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match="task: unknown 'gan'"):
        build_config("gan")
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"task": "vqgan", "steps": 3}))
    with pytest.raises(ValueError, match="the file is not a 'transformer' config"):
        build_config("transformer", path)
    # a file without ``task:`` is a diffusion run (as run files written before tasks had one)
    path.write_text(yaml.safe_dump({"steps": 3}))
    assert isinstance(load_config(path), DiffusionRunConfig)
    assert main(["train", str(path), "task=gan", "--print-config"]) == 2
    assert "task: unknown 'gan'" in capsys.readouterr().err
    assert main(["train", "--preset", "vqgan-digits", "task=transformer"]) == 2
    assert "does not match preset 'vqgan-digits'" in capsys.readouterr().err
    assert main(["train", "--preset", "no-such"]) == 2
    err = capsys.readouterr().err
    assert "unknown training preset 'no-such'" in err and "vqgan-digits" in err


def test_cli_print_config_reads_back(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--preset", "vqgan-digits", "--print-config", "steps=7"]) == 0
    path = tmp_path / "printed.yaml"
    path.write_text(capsys.readouterr().out)
    cfg = load_config(path)
    assert isinstance(cfg, VQGANRunConfig)
    assert cfg.steps == 7 and cfg.model == get_preset("vqgan-digits").model
    assert cfg == replace(get_preset("vqgan-digits"), steps=7)
    assert main(["train", "--preset", "vqgan-digits", "--print-config", "train.steps=7"]) == 2
    assert "train.steps: this key moved" in capsys.readouterr().err
    # an explicit ``task: diffusion`` gives the same config as no task key
    diff = tmp_path / "diff.yaml"
    diff.write_text(yaml.safe_dump({"steps": 3, "optim": {"lr": 1e-4}}))
    assert main(["train", str(diff), "--print-config"]) == 0
    plain = capsys.readouterr().out
    diff.write_text(yaml.safe_dump({"task": "diffusion", "steps": 3, "optim": {"lr": 1e-4}}))
    assert main(["train", str(diff), "--print-config"]) == 0
    assert capsys.readouterr().out == plain and "steps: 3" in plain


def test_train_both_stages_then_vq_sample(tmp_path: Path) -> None:
    vq_dir, gpt_dir, img_dir = tmp_path / "vq", tmp_path / "gpt", tmp_path / "png"
    vq_yaml = tmp_path / "vqgan.yaml"
    vq_yaml.write_text(yaml.safe_dump(TINY_VQGAN))
    assert main(["train", str(vq_yaml), f"out_dir={vq_dir}"]) == 0
    meta = json.loads((vq_dir / "vqgan.json").read_text())
    log = _log_rows(vq_dir / "log.csv")
    assert [int(r["step"]) for r in log] == [2, 4]
    assert log[0]["d_loss"] == "" and float(log[1]["d_loss"]) >= 0  # the PatchGAN from step 2
    assert "d_loss" in meta["final"] and meta["steps"] == 4
    assert 0 < meta["usage"] <= 1 and meta["psnr_db"] > 0
    assert load_config(vq_dir / "vqgan_run.yaml").out_dir == str(vq_dir)
    ckpt = vq_dir / "checkpoints" / "step-00000004"
    for name in ("model", "discriminator"):
        assert (ckpt / f"{name}.safetensors").is_file()
    assert (ckpt / "manifest.json").is_file() and (ckpt / "state.pt").is_file()
    assert load_vqgan(vq_dir).n_codes == 16

    gpt_yaml = tmp_path / "transformer.yaml"
    gpt_yaml.write_text(yaml.safe_dump(_tiny_transformer(vq_dir, gpt_dir)))
    assert main(["train", str(gpt_yaml)]) == 0
    for name in ("vqgan.safetensors", "vqgan.json", "transformer.safetensors", "transformer.json"):
        assert (gpt_dir / name).is_file()  # a self-contained directory for vq-sample
    assert not list(gpt_dir.glob(".*tmp*"))  # no temporary files left behind
    gpt, tmeta = load_transformer(gpt_dir)
    assert (tmeta.n_codes, tmeta.n_classes, tmeta.grid, tmeta.permuter) == (
        16, 10, (4, 4), "z_curve"
    )  # fmt: skip
    assert (tmeta.gpt.vocab_size, tmeta.gpt.block_size, tmeta.gpt.n_layer) == (26, 16, 1)
    assert len(gpt.blocks) == 1

    args = ["vq-sample", "--ckpt", str(gpt_dir), "--class", "3", "--n", "2", "--seed", "5"]
    assert main([*args, "--outdir", str(img_dir)]) == 0
    files = sorted(img_dir.glob("*.png"))
    assert [f.name for f in files] == ["00000-5.png", "00001-6.png"]  # A1111 NNNNN-seed names
    with Image.open(files[1]) as img:
        assert img.size == (8, 8)
        params = json.loads(img.text["parameters"])
    assert params["class"] == 3 and params["seed"] == 6


def test_image_conditional_stage_two_then_vq_sample(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # taming's cond stage: the GPT sees the codes of a 4 px low-resolution copy of each digit
    # (encoded by the first stage) and samples the 8 px digit's codes after them
    vq_dir, img_dir = tmp_path / "vq", tmp_path / "png"
    vq_yaml = tmp_path / "vqgan.yaml"
    vq_yaml.write_text(yaml.safe_dump(TINY_VQGAN))
    assert main(["train", str(vq_yaml), f"out_dir={vq_dir}"]) == 0
    run = _tiny_transformer(vq_dir, vq_dir) | {"n_classes": 0, "cond_image": "lowres"}
    gpt_yaml = tmp_path / "transformer.yaml"
    gpt_yaml.write_text(yaml.safe_dump(run))
    assert main(["train", str(gpt_yaml)]) == 0
    gpt, meta = load_transformer(vq_dir)
    assert (meta.cond_image, meta.cond_size, meta.cond_grid, meta.cond_n_codes) == (
        "lowres", 4, (2, 2), 16
    )  # fmt: skip
    assert meta.cond_stage == "first_stage" and not (vq_dir / "cond_vqgan.json").exists()
    assert (meta.gpt.vocab_size, meta.gpt.block_size) == (32, 4 + 16 - 1)

    source = tmp_path / "cond.png"
    Image.fromarray((np.arange(64).reshape(8, 8) * 4).astype(np.uint8)).save(source)
    args = ["vq-sample", "--ckpt", str(vq_dir), "--n", "2", "--outdir", str(img_dir)]
    assert main(args) == 2
    assert "conditioned on an image (lowres): pass --cond-image" in capsys.readouterr().err
    assert main([*args, "--cond-image", str(source)]) == 0
    with Image.open(sorted(img_dir.glob("*.png"))[0]) as img:
        assert img.size == (8, 8)
        params = json.loads(img.text["parameters"])
    assert params["cond_image"] == str(source) and params["class"] is None

    # edge maps encoded by a separate cond-stage VQGAN, stored beside the first stage
    edges_dir = tmp_path / "edges"
    run |= {"cond_image": "edges", "cond_vqgan_dir": str(vq_dir), "out_dir": str(edges_dir)}
    run["permuter"] = "identity"  # sliding-window sampling reads codes in raster order
    gpt_yaml.write_text(yaml.safe_dump(run))
    assert main(["train", str(gpt_yaml)]) == 0
    _, meta = load_transformer(edges_dir)
    assert (meta.cond_stage, meta.cond_size, meta.cond_grid) == ("cond_vqgan", 8, (4, 4))
    assert load_vqgan(edges_dir, name="cond_vqgan").n_codes == 16
    args = ["vq-sample", "--ckpt", str(edges_dir), "--n", "1", "--cond-image", str(source)]
    assert main([*args, "--size", "12", "--outdir", str(tmp_path / "big")]) == 0  # sliding window
    with Image.open(next((tmp_path / "big").glob("*.png"))) as img:
        assert img.size == (12, 12) and json.loads(img.text["parameters"])["size"] == 12


def test_gumbel_temperature_schedule_is_applied_while_training(tmp_path: Path) -> None:
    sched = GumbelTemperatureConfig(warm_up_steps=2, max_decay_steps=6, t_start=0.5, t_max=1.0)
    at = lambda cfg, s: gumbel_temperature(cfg, s)  # noqa: E731
    temps = [at(sched, s) for s in (0, 1, 2, 4, 6, 9)]  # warm-up 0.5 -> 1, cosine to t_min 1e-6
    assert temps == pytest.approx([0.5, 0.75, 1.0, 0.5 + 0.5e-6, 1e-6, 1e-6])
    expo = GumbelTemperatureConfig(schedule="exponential", t_start=1.0, rate=0.5, t_min=0.2)
    assert at(expo, 0) == 1.0 and at(expo, 2) == pytest.approx(np.exp(-1.0))
    assert at(expo, 9) == 0.2
    assert at(GumbelTemperatureConfig(schedule="constant", t_start=0.3), 100) == 0.3
    with pytest.raises(ValueError, match="warm_up_steps < max_decay_steps"):
        GumbelTemperatureConfig(warm_up_steps=5, max_decay_steps=5)

    cfg = VQGANRunConfig(
        model=replace(TINY, quantizer="gumbel"),
        data=DataConfig(dataset="digits", size=16, batch_size=4),
        loss=AutoencoderLossConfig(disc_start=100, perceptual_weight=0.0, disc_in_channels=1),
        gumbel_temperature=sched,
        steps=4,
        log_every=1,
        out_dir=str(tmp_path / "gumbel"),
        device="cpu",
        progress=False,
    )
    out = train_vqgan(cfg)
    records = _log_rows(out / "log.csv")  # one record per step: the temperature it was set to
    assert [float(r["temperature"]) for r in records] == [at(sched, s) for s in range(4)]
    final = json.loads((out / "vqgan.json").read_text())["final"]
    assert final["temperature"] == at(sched, 3)  # the last step ran at step 3's temperature
