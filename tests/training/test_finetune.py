"""task: finetune on a tiny random SD 1.x checkpoint: LoRA learns, the kohya file loads in
diffusers + peft with the same UNet / text-encoder outputs as our merged weights, the full
fine-tune round-trips through diffusers' from_single_file, caches re-encode only what changed,
resume is exact, bad input fails in one line naming the file."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from genmodels.pipelines.loading import load_pipeline
from genmodels.training.finetune import FinetuneTrainer
from genmodels.training.finetune_config import LoRAConfig
from genmodels.training.finetune_export import save_kohya_lora
from genmodels.training.lora import build_lora_network
from genmodels.training.task_configs import dump_config
from tests.training.finetune_helpers import finetune_config, image_folder, tiny_checkpoint
from tests.training.helpers import env

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

SIZES = [(64, 64), (96, 64), (64, 128), (80, 80)]


@pytest.fixture(scope="module")
def sd1(tmp_path_factory) -> tuple[Path, dict]:
    return tiny_checkpoint(tmp_path_factory.mktemp("sd1"))


@pytest.fixture
def images(tmp_path) -> Path:
    return image_folder(tmp_path / "images", SIZES)


def _diffusers_pipe(folder: Path):
    unet = diffusers.UNet2DConditionModel.from_pretrained(folder / "unet")
    vae = diffusers.AutoencoderKL.from_pretrained(folder / "vae")
    te = transformers.CLIPTextModel.from_pretrained(folder / "text_encoder")
    return diffusers.StableDiffusionPipeline(
        vae=vae, text_encoder=te, tokenizer=None, unet=unet, scheduler=diffusers.DDPMScheduler(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip


def test_lora_loads_in_diffusers_with_the_same_outputs(sd1, tmp_path) -> None:
    """Every adapter (attention, proj, ff, LoCon convs, text encoder) is taken by diffusers'
    load_lora_weights (no key left over or ignored) and the UNet / text encoder outputs equal
    ours with the deltas merged into the weights (1e-4)."""
    init, _ = sd1
    pipe = load_pipeline(init)
    cfg = LoRAConfig(rank=4, alpha=2, conv_rank=2, conv_alpha=1, text_encoder=True)
    net = build_lora_network(pipe.unet, pipe.text_encoder, "sd1", cfg)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # non-zero up weights: a delta that shows
        for a in net.adapters.values():
            a.lora_up.weight.copy_(torch.randn(a.lora_up.weight.shape, generator=gen) * 0.1)
    save_kohya_lora(tmp_path / "lora.safetensors", net, {"ss_network_dim": "4"}, "fp32")
    keys = load_file(tmp_path / "lora.safetensors")
    assert (
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight"
        in keys
    )
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj.alpha" in keys
    ref = _diffusers_pipe(init.parent / "diffusers")
    messages: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())  # type: ignore[method-assign]
    for name in ("diffusers", "peft"):
        logging.getLogger(name).addHandler(handler)
    try:
        ref.load_lora_weights(tmp_path / "lora.safetensors")
    finally:
        for name in ("diffusers", "peft"):
            logging.getLogger(name).removeHandler(handler)
    ignored = [m for m in messages if "unexpected" in m.lower() or "not" in m.lower()]
    assert not ignored, ignored
    layers = [m for m in ref.unet.modules() if isinstance(m, peft.tuners.lora.LoraLayer)]
    te_layers = [m for m in ref.text_encoder.modules() if isinstance(m, peft.tuners.lora.LoraLayer)]
    n_unet = sum(k.startswith("lora_unet_") for k in net.adapters)
    assert len(layers) == n_unet and len(te_layers) == len(net.adapters) - n_unet
    net.merge_into_bases()
    x = torch.randn(2, 4, 8, 8, generator=gen)
    t, ctx = torch.tensor([10.0, 700.0]), torch.randn(2, 5, 32, generator=gen)
    ids = torch.randint(0, 1000, (2, 77), generator=gen)
    with torch.no_grad():
        ours, theirs = (
            pipe.unet(x, t, context=ctx),
            ref.unet(x, t, encoder_hidden_states=ctx).sample,
        )
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
        te_ours = pipe.text_encoder.embedders[0].model(ids).last_hidden_state
        torch.testing.assert_close(te_ours, ref.text_encoder(ids).last_hidden_state,
                                   atol=1e-4, rtol=1e-4)  # fmt: skip
    assert (ours - load_pipeline(init).unet(x, t, context=ctx)).abs().max() > 1e-2


def test_our_own_load_lora_reproduces_the_merged_weights(sd1, tmp_path) -> None:
    """The trained file through genmodels' generation side (``pipe.load_lora``, strict: every
    key used): UNet and text encoder equal the training network's merged weights, and
    ``unload_loras`` gives back the base model bit for bit."""
    init, _ = sd1
    trained = load_pipeline(init)
    cfg = LoRAConfig(rank=4, alpha=2, conv_rank=2, conv_alpha=1, text_encoder=True)
    net = build_lora_network(trained.unet, trained.text_encoder, "sd1", cfg)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for a in net.adapters.values():
            a.lora_up.weight.copy_(torch.randn(a.lora_up.weight.shape, generator=gen) * 0.1)
    save_kohya_lora(tmp_path / "lora.safetensors", net, {}, "fp32")
    net.merge_into_bases()
    pipe = load_pipeline(init)
    base = pipe.unet.state_dict()
    applied = pipe.load_lora(tmp_path / "lora.safetensors", strict=True)
    assert applied.path.name == "lora.safetensors"
    x = torch.randn(2, 4, 8, 8, generator=gen)
    t, ctx = torch.tensor([10.0, 700.0]), torch.randn(2, 5, 32, generator=gen)
    ids = torch.randint(0, 1000, (2, 77), generator=gen)
    with torch.no_grad():
        got = pipe.unet(x, t, context=ctx)
        torch.testing.assert_close(got, trained.unet(x, t, context=ctx), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(
            pipe.text_encoder.embedders[0].model(ids).last_hidden_state,
            trained.text_encoder.embedders[0].model(ids).last_hidden_state,
            atol=1e-5, rtol=1e-5,
        )  # fmt: skip
    pipe.unload_loras()
    assert all(torch.equal(v, base[k]) for k, v in pipe.unet.state_dict().items())


def _fixed_loss(trainer: FinetuneTrainer, images: list[int]) -> float:
    """The loss of one batch with fixed sigma / noise (eval mode, no dropout)."""
    latents, crops = trainer._rows(images, 0)
    x0 = torch.stack(latents)
    gen = torch.Generator().manual_seed(123)
    sigma, noise = trainer.loss_fn.draw(len(images), tuple(x0.shape[1:]), generator=gen)
    with torch.no_grad():
        cond = trainer._cond(images, torch.zeros(len(images), dtype=torch.bool), crops, 0)
        return float(trainer.loss_fn(trainer.denoiser, x0, cond, sigma=sigma, noise=noise).mean())


def test_lora_steps_reduce_the_loss_and_write_kohya_file(sd1, tmp_path) -> None:
    init, _ = sd1
    data = image_folder(tmp_path / "one", [(64, 64)], sub="5_dog")
    cfg = finetune_config(init, data, tmp_path / "run", steps=12, optim={"lr": 1e-2},
                          data={"batch_size": 2}, sample_prompts=["a cat", "a dog"],
                          sample_every=12, sample_steps=3, guidance_scale=2.0)  # fmt: skip
    trainer = FinetuneTrainer(cfg)
    before = _fixed_loss(trainer, [0, 0])
    trainer.fit()
    after = _fixed_loss(trainer, [0, 0])
    assert after < 0.85 * before, (before, after)
    path = tmp_path / "run" / "model.safetensors"
    with safe_open(str(path), "pt") as f:
        meta, keys = f.metadata(), list(f.keys())
    assert all(k.startswith("lora_unet_") for k in keys)
    assert {k.rsplit(".", 2)[-2] if k.endswith("weight") else "alpha" for k in keys} == {
        "lora_down", "lora_up", "alpha"}  # fmt: skip
    assert meta["ss_base_model_version"] == "sd_v1" and meta["ss_network_dim"] == "4"
    assert meta["ss_network_alpha"] == "4" and meta["ss_steps"] == "12"
    assert meta["ss_sd_model_name"] == "model.safetensors" and len(meta["ss_sd_model_hash"]) == 8
    assert meta["ss_num_train_images"] == "5" and meta["ss_resolution"] == "(64, 64)"
    assert '"5_dog": {"a cat": 1, "picture 0": 1, "red": 1}' in meta["ss_tag_frequency"]
    assert load_file(path)[keys[0]].dtype == torch.float16  # lora.save_dtype
    lora_bytes = path.stat().st_size
    assert lora_bytes < 0.5 * init.stat().st_size
    # samples: a row per prompt, with the adapter | without it; the grid in TensorBoard too
    grid = np.asarray(Image.open(tmp_path / "run" / "samples" / "step-00000012.png"))
    assert grid.shape == (2 * 65 + 1, 2 * 65 + 1, 3)
    assert np.abs(grid[1:65, 1:65].astype(int) - grid[1:65, 66:130]).max() > 10
    events = next((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*")).read_bytes()
    assert b"samples" in events and b"\x89PNG" in events


def test_full_finetune_round_trips_through_from_single_file(sd1, tmp_path, images) -> None:
    init, _ = sd1
    cfg = finetune_config(init, images, tmp_path / "run", train="full", steps=2,
                          ema={"enabled": True, "max_value": 0.5},
                          output={"format": "both", "weights": "raw"})  # fmt: skip
    trainer = FinetuneTrainer(cfg)
    trainer.fit()
    out = tmp_path / "run" / "model.safetensors"
    trained = {k: v.clone() for k, v in trainer.unet.state_dict().items()}
    ours = load_pipeline(out)
    for k, v in ours.unet.state_dict().items():  # the raw weights, bit for bit
        assert torch.equal(v, trained[k]), k
    assert not torch.equal(trained["out.2.weight"], load_pipeline(init).unet.out[2].weight)
    ref = diffusers.UNet2DConditionModel.from_single_file(
        str(out), config=str(init.parent / "diffusers"), subfolder="unet", local_files_only=True
    )
    gen = torch.Generator().manual_seed(1)
    x, ctx = torch.randn(1, 4, 8, 8, generator=gen), torch.randn(1, 5, 32, generator=gen)
    with torch.no_grad():
        want = ours.unet(x, torch.tensor([300.0]), context=ctx)
        got = ref(x, torch.tensor([300.0]), encoder_hidden_states=ctx).sample
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    folder = load_pipeline(tmp_path / "run" / "model")  # the diffusers folder
    assert torch.equal(folder.unet.out[2].weight, trained["out.2.weight"])


def test_caches_encode_only_what_changed(sd1, tmp_path, images) -> None:
    init, _ = sd1
    cache = {"dir": str(tmp_path / "cache")}
    kw = dict(cache=cache, data={"random_flip": True}, steps=1)
    first = FinetuneTrainer(finetune_config(init, images, tmp_path / "a", **kw))
    assert first.latents.encoded == 2 * len(SIZES)  # both orientations
    assert first.text.encoded == len(SIZES) + 1  # every caption and ""
    first.fit()
    again = FinetuneTrainer(finetune_config(init, images, tmp_path / "b", **kw))
    assert (again.latents.encoded, again.text.encoded) == (0, 0)
    again.fit()
    assert (again.latents.encoded, again.text.encoded) == (0, 0)  # training read the cache
    Image.new("RGB", (64, 64), (255, 0, 0)).save(images / "3_cat" / "0.png")  # changed image
    (images / "3_cat" / "1.txt").write_text("a dog", encoding="utf-8")  # changed caption
    changed = FinetuneTrainer(finetune_config(init, images, tmp_path / "c", **kw))
    assert (changed.latents.encoded, changed.text.encoded) == (2, 1)


def test_resume_is_exact_and_checkpointing_changes_nothing(sd1, tmp_path, images) -> None:
    init, _ = sd1
    kw = dict(steps=4, captions={"dropout": 0.3, "shuffle_tags": True, "keep_tokens": 1},
              loss={"min_snr_gamma": 5.0, "offset_noise": 0.1}, ema={"enabled": True})  # fmt: skip
    whole = FinetuneTrainer(finetune_config(init, images, tmp_path / "whole", **kw))
    whole.fit()
    part = FinetuneTrainer(finetune_config(init, images, tmp_path / "part", **kw | {"steps": 2}))
    part.fit()
    cfg = finetune_config(init, images, tmp_path / "part", gradient_checkpointing=False, **kw)
    resumed = FinetuneTrainer(cfg)
    assert resumed.resume() and resumed.step == 2
    resumed.fit()
    a, b = whole.lora.state_dict(), resumed.lora.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    ckpt = FinetuneTrainer(finetune_config(init, images, tmp_path / "ckpt",
                                           gradient_checkpointing=True, **kw))  # fmt: skip
    ckpt.fit()
    c = ckpt.lora.state_dict()
    assert max(float((a[k] - c[k]).abs().max()) for k in a) < 1e-5


def test_bad_inputs_name_the_file(sd1, tmp_path) -> None:
    init, _ = sd1
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=f"no readable images .* in {empty}"):
        FinetuneTrainer(finetune_config(init, empty, tmp_path / "r1"))
    latin = image_folder(tmp_path / "latin", [(64, 64)])
    (latin / "3_cat" / "0.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(ValueError, match=r"0\.txt: not UTF-8"):
        FinetuneTrainer(finetune_config(init, latin, tmp_path / "r2"))
    small = image_folder(tmp_path / "small", [(64, 64), (40, 20)])
    with pytest.raises(ValueError, match=r"1\.png: 40x20 px is smaller than the smallest bucket"):
        FinetuneTrainer(finetune_config(init, small, tmp_path / "r3"))
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 100)
    good = image_folder(tmp_path / "good", [(64, 64)])
    with pytest.raises(ValueError, match="junk.safetensors"):
        FinetuneTrainer(finetune_config(junk, good, tmp_path / "r4"))
    assert not (tmp_path / "r4" / "model.safetensors").exists()
    assert not list((tmp_path / "r4").glob("checkpoints/*"))


def test_corrupt_images_are_skipped_counted_and_listed_by_the_cli(sd1, tmp_path, images) -> None:
    init, _ = sd1
    (images / "3_cat" / "broken.png").write_bytes(b"not a png")
    cfg = finetune_config(init, images, tmp_path / "run", steps=2, train="full",
                          output={"fp16": True})  # fmt: skip
    yaml = dump_config(cfg, tmp_path / "run.yaml") and tmp_path / "run.yaml"
    cmd = [sys.executable, "-m", "genmodels.cli.main", "train", str(yaml)]
    done = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "skipped 1 unreadable image(s):" in done.stdout and "broken.png" in done.stdout
    out = load_file(tmp_path / "run" / "model.safetensors")
    assert out["model.diffusion_model.out.2.weight"].dtype == torch.float16
    assert "skipped_images" in (tmp_path / "run" / "log.csv").read_text().splitlines()[0]


def test_lora_on_two_ranks_equals_one_process(sd1, tmp_path, images) -> None:
    """torchrun DDP (gloo, 2 CPU ranks; adapters' gradients averaged by hand) trains the same
    adapters as one process with the same global batch."""
    init, _ = sd1
    kw = dict(steps=2, device="cpu", data={"batch_size": 4}, optim={"grad_accum": 2})
    FinetuneTrainer(finetune_config(init, images, tmp_path / "one", **kw)).fit()
    cfg = finetune_config(init, images, tmp_path / "two", **kw)
    yaml = dump_config(cfg, tmp_path / "two.yaml") and tmp_path / "two.yaml"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "genmodels.cli.main", "train", str(yaml)]  # fmt: skip
    done = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    a = load_file(tmp_path / "one" / "model.safetensors")
    b = load_file(tmp_path / "two" / "model.safetensors")
    diff = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    moved = max(float(a[k].float().abs().max()) for k in a if "lora_up" in k)
    assert moved > 1e-3 and diff < 0.03 * moved, (diff, moved)


def test_config_layout(tmp_path) -> None:
    from genmodels.training.tasks import build_config, load_config

    path = tmp_path / "ft.yaml"
    text = "task: finetune\ninit: m.safetensors\ntrain: full\ndata: {path: imgs}\n"
    path.write_text(text + "lora: {rank: 8, conv_rank: 4}\noutput: {format: both, fp16: true}\n")
    cfg = load_config(path, ["loss.min_snr_gamma=5"])
    assert (cfg.train, cfg.lora.rank, cfg.output.format, cfg.loss.min_snr_gamma) == (
        "full", 8, "both", 5.0)  # fmt: skip
    assert "task: finetune" in dump_config(cfg) and "model:" not in dump_config(cfg)
    with pytest.raises(ValueError, match="train: 'half' is not one of"):
        build_config("finetune", {"train": "half"})
    with pytest.raises(ValueError, match="train.lr: this key moved"):
        build_config("finetune", {"train": {"lr": 1}})
    with pytest.raises(ValueError, match="lora.targets"):
        build_config("finetune", {"lora": {"targets": ["convs"]}})
    with pytest.raises(ValueError, match="init: give the checkpoint"):
        FinetuneTrainer(build_config("finetune", {"data": {"path": str(tmp_path)}}))
