"""taming-transformers checkpoints: VQGAN config inference, loading, Net2Net import, errors."""

from __future__ import annotations

import sys
import types
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save_file

from genmodels.checkpoints.io import CheckpointError
from genmodels.checkpoints.runs import load_transformer, load_vqgan
from genmodels.checkpoints.taming import (
    load_taming_gpt,
    load_taming_vq,
    load_taming_vqgan,
    net2net_parts,
    vq_config_from_taming_state_dict,
)
from genmodels.checkpoints.taming_import import import_taming
from genmodels.cli.main import main
from genmodels.configs.gpt import GPTConfig
from genmodels.configs.vqgan import PRESETS, VQConfig
from genmodels.models.gpt import GPT
from genmodels.models.gpt_sampling import sample
from genmodels.models.net2net import make_prefix
from genmodels.models.permuters import make_permuter
from genmodels.models.vqgan import VQModel
from genmodels.pipelines.vq_transformer import sample_images

# f2, 32/64 wide, attention at level 1 only; built at 32 px so that the inferred config (256 px,
# attention at 128) differs in its numbers but must build the same network.
TINY = VQConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(16,), resolution=32,
                z_channels=8, n_embed=16, embed_dim=8, legacy=True)  # fmt: skip
GPT_CFG = GPTConfig(vocab_size=16, block_size=16, n_layer=1, n_head=2, n_embd=16)


def _random(sd: dict[str, torch.Tensor], seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: v if not v.is_floating_point() or k.endswith(".mask")
            else torch.randn(v.shape, generator=g) * 0.1 for k, v in sd.items()}  # fmt: skip


def _vq_sd(cfg: VQConfig = TINY, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random VQGAN weights in taming's layout, with the training-only ``loss.*`` entries."""
    sd = _random(VQModel(cfg).state_dict(), seed)
    sd["loss.logvar"] = torch.zeros(())
    sd["loss.discriminator.main.0.weight"] = torch.randn(8, 3, 4, 4)
    return sd


@pytest.fixture
def lightning():  # noqa: ANN201
    """Saves a Lightning-style ``.ckpt``: its ``callbacks`` keyed by a stand-in for
    ``pytorch_lightning``'s ModelCheckpoint class (importable only while saving) with a numpy
    scalar beside a tensor, plus optimizer state, as taming's PL 1.x checkpoints."""
    name = "pytorch_lightning.callbacks.model_checkpoint"
    modules = {n: types.ModuleType(n) for n in ("pytorch_lightning", "pytorch_lightning.callbacks")}
    modules[name] = types.ModuleType(name)
    cls = type("ModelCheckpoint", (), {"__module__": name})
    modules[name].ModelCheckpoint = cls

    def save(state_dict: dict, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        callback = {"best_model_score": torch.tensor(0.5), "kth": np.float64(1.5),
                    "scores": np.arange(3), "dtype": np.dtype("f4")}  # fmt: skip
        opt = {"state": {0: {"exp_avg": torch.zeros(2)}},
               "param_groups": [{"lr": 4.5e-6, "betas": (0.5, 0.9), "params": [0]}]}  # fmt: skip
        with pytest.MonkeyPatch.context() as mp:
            for n, m in modules.items():
                mp.setitem(sys.modules, n, m)
            torch.save({"state_dict": state_dict, "global_step": 12, "epoch": 1,
                        "pytorch-lightning_version": "1.0.8", "optimizer_states": [opt],
                        "lr_schedulers": [], "callbacks": {cls: callback}}, path)  # fmt: skip
        return path

    return save


@pytest.mark.parametrize("name", ["imagenet_f16_1024", "imagenet_f16_16384", "gumbel_f8_8192"])
def test_config_of_each_taming_preset_is_recovered(name: str) -> None:
    with torch.device("meta"):  # shapes only: the full models are never allocated
        sd = VQModel(PRESETS[name]).state_dict()
        sd["loss.logvar"] = torch.zeros(())
        cfg = vq_config_from_taming_state_dict(sd)
        rebuilt = VQModel(cfg).state_dict()
    assert cfg == PRESETS[name]
    own = {k: v.shape for k, v in sd.items() if not k.startswith("loss.")}
    assert {k: v.shape for k, v in rebuilt.items()} == own


@pytest.mark.parametrize("variant", ["vq", "gumbel", "ema", "remap"])
def test_lightning_ckpt_round_trip(variant: str, tmp_path: Path, lightning) -> None:  # noqa: ANN001
    cfg = {
        "vq": TINY,
        "gumbel": replace(TINY, quantizer="gumbel"),
        "ema": replace(TINY, quantizer="ema"),
        "remap": replace(TINY, remap=(1, 3, 5, 7)),
    }
    original = VQModel(cfg[variant]).eval()  # fmt: skip
    sd = _vq_sd(cfg[variant])
    load_taming_vq(original, sd)
    path = lightning(sd, tmp_path / "logs" / "run" / "checkpoints" / "last.ckpt")
    model = load_taming_vqgan(path)
    assert model.config.quantizer == cfg[variant].quantizer and model.config.resolution == 256
    assert model.config.attn_resolutions == (128,) and model.config.remap == cfg[variant].remap
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    with torch.no_grad():
        torch.manual_seed(0)  # the Gumbel quantiser draws noise in eval mode too
        want = original(x)[0]
        torch.manual_seed(0)
        torch.testing.assert_close(model(x)[0], want, rtol=0, atol=0)


def test_bare_state_dict_and_safetensors_load(tmp_path: Path) -> None:
    sd = _vq_sd()
    torch.save(sd, tmp_path / "bare.pt")
    save_file({k: v for k, v in sd.items() if not k.startswith("loss.")}, tmp_path / "m.sft")
    for name in ("bare.pt", "m.sft"):
        model = load_taming_vqgan(tmp_path / name, config=replace(TINY, resolution=32))
        torch.testing.assert_close(model.quantize.embedding.weight, sd["quantize.embedding.weight"])


def _net2net(cond: str = "sos", permuter: str | None = None, seed: int = 1) -> dict:
    """A Net2NetTransformer state dict: first stage, GPT, and optional cond stage / permuter."""
    vq = _vq_sd(seed=seed)
    sd = {f"first_stage_model.{k}": v for k, v in vq.items()}
    sd |= {f"transformer.{k}": v for k, v in _random(GPT(GPT_CFG).state_dict(), seed).items()}
    if cond == "first_stage":
        sd |= {f"cond_stage_model.{k}": v for k, v in vq.items()}
    elif cond == "vqgan":
        seg = _vq_sd(replace(TINY, in_channels=5, out_ch=5), seed + 1)
        sd |= {f"cond_stage_model.{k}": v for k, v in seg.items()}
        sd["cond_stage_model.colorize"] = torch.randn(3, 5, 1, 1)
    if permuter is not None:
        order = make_permuter(permuter, 4, 4).forward_shuffle_idx
        sd["permuter.forward_shuffle_idx"] = order
        sd["permuter.backward_shuffle_idx"] = torch.argsort(order)
    return sd


def _project(logdir: Path, cond_stage: object, **params: object) -> Path:
    """taming's configs/<time>-project.yaml for a tiny Net2NetTransformer run."""
    gpt = {"vocab_size": 16, "block_size": 16, "n_layer": 1, "n_head": 2, "n_embd": 16}
    ddconfig = {"resolution": 8, "ch": 32, "ch_mult": [1, 2], "attn_resolutions": [4]}
    config = {"model": {"target": "taming.models.cond_transformer.Net2NetTransformer", "params": {
        "cond_stage_config": cond_stage, "first_stage_key": "image",
        "transformer_config": {"target": "taming.modules.transformer.mingpt.GPT", "params": gpt},
        "first_stage_config": {"target": "taming.models.vqgan.VQModel",
                               "params": {"n_embed": 16, "embed_dim": 8, "ddconfig": ddconfig}},
        **params}}}  # fmt: skip
    path = logdir / "configs" / "2021-04-23T18-19-01-project.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    return path


def test_unconditional_net2net_imports_and_samples_like_taming(tmp_path: Path, lightning) -> None:  # noqa: ANN001
    sd = _net2net(permuter="z_curve")
    logdir = tmp_path / "logs" / "2021-04-23T18-19-01_ffhq_transformer"
    ckpt = lightning(sd, logdir / "checkpoints" / "last.ckpt")
    _project(logdir, "__is_unconditional__", sos_token=0)
    out = tmp_path / "run"
    done = import_taming(ckpt, out)
    files = ["transformer.json", "transformer.safetensors", "vqgan.json", "vqgan.safetensors"]
    assert done.notes == [] and sorted(p.name for p in out.iterdir()) == files
    vq, (gpt, meta) = load_vqgan(out), load_transformer(out)
    assert meta.grid == (4, 4) and meta.permuter == "z_curve" and meta.n_classes == 0
    assert make_prefix(meta, None, 2).tolist() == [[0], [0]]  # taming's SOS token 0
    # taming's sampling: SOS prefix, 16 codes, undo the permutation, decode the codes
    ref_gpt = GPT(GPT_CFG).eval()
    load_taming_gpt(ref_gpt, sd)
    ref_vq = VQModel(TINY).eval()
    load_taming_vq(ref_vq, sd, prefix="first_stage_model.")
    tokens = sample(ref_gpt, torch.zeros(2, 1, dtype=torch.long), 16, 7, top_k=5)
    codes = make_permuter("z_curve", 4, 4)(tokens, reverse=True).reshape(2, 4, 4)
    with torch.no_grad():
        want = ref_vq.decode_code(codes).clamp(-1, 1)
    got = sample_images(vq, gpt, meta, None, 2, seed=7, top_k=5)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    rc = main(["vq-sample", "--ckpt", str(out), "--n", "2", "--outdir", str(tmp_path / "png")])
    assert rc == 0 and len(list((tmp_path / "png").glob("*.png"))) == 2


def test_class_conditional_tokens_are_the_labels(tmp_path: Path, lightning) -> None:  # noqa: ANN001
    logdir = tmp_path / "cin_transformer"
    ckpt = lightning(_net2net(), logdir / "checkpoints" / "last.ckpt")
    labelator = {"target": "taming.modules.util.Labelator", "params": {"n_classes": 3}}
    _project(logdir, labelator, cond_stage_key="class_label")
    meta = import_taming(ckpt, tmp_path / "run").meta
    assert meta is not None and meta.n_classes == 3 and meta.cond_offset == 0
    assert make_prefix(meta, torch.tensor([2, 0]), 2).tolist() == [[2], [0]]
    with pytest.raises(ValueError, match="contradicts the project config"):
        import_taming(ckpt, tmp_path / "run2", n_classes=4)
    rc = main(["vq-sample", "--ckpt", str(tmp_path / "run"), "--class", "1", "--n", "1",
               "--outdir", str(tmp_path / "png")])  # fmt: skip
    assert rc == 0


def test_without_project_config_n_head_is_needed(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    ckpt = tmp_path / "last.ckpt"
    torch.save({"state_dict": _net2net(), "global_step": 3}, ckpt)
    with pytest.raises(ValueError, match="n_head is not stored in the weights"):
        import_taming(ckpt, tmp_path / "run", size=8)
    assert not (tmp_path / "run").exists()
    rc = main(["import-taming", str(ckpt), str(tmp_path / "run"), "--n-head", "2", "--size", "8"])
    printed = capsys.readouterr().out
    assert rc == 0 and "SOS token 0" in printed and "assumed unconditional" in printed
    assert load_transformer(tmp_path / "run")[1].grid == (4, 4)
    # the default 256 px grid (128 x 128 codes) does not fit the GPT: the error says so
    rc = main(["import-taming", str(ckpt), str(tmp_path / "run2"), "--n-head", "2"])
    assert rc == 2 and "block_size 16" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt", "run"]  # no temporary left


@pytest.mark.parametrize("cond", ["vqgan", "first_stage", "coord"])
def test_image_and_coord_conditioning_is_refused(cond: str, tmp_path: Path) -> None:
    logdir = tmp_path / "sflckr"
    ckpt = logdir / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"state_dict": _net2net("sos" if cond == "coord" else cond)}, ckpt)
    stage = {"vqgan": {"target": "taming.models.vqgan.VQModel"},
             "first_stage": "__is_first_stage__",
             "coord": {"target": "taming.modules.misc.coord.CoordStage"}}[cond]  # fmt: skip
    _project(logdir, stage)
    assert net2net_parts(torch.load(ckpt)["state_dict"]).cond_stage == (
        "none" if cond == "coord" else cond)  # fmt: skip
    with pytest.raises(CheckpointError, match="conditioning cannot be expressed"):
        import_taming(ckpt, tmp_path / "run")
    # its stages still load on their own (the segmentation VQGAN without its colorize buffer)
    assert load_taming_vqgan(ckpt).config.n_embed == 16
    if cond == "vqgan":
        assert load_taming_vqgan(ckpt, prefix="cond_stage_model.").config.in_channels == 5


def test_unknown_permuter_order_is_refused(tmp_path: Path) -> None:
    sd = _net2net(permuter="z_curve")
    sd["permuter.forward_shuffle_idx"] = torch.arange(16).flip(0)
    torch.save({"state_dict": sd}, tmp_path / "m.ckpt")
    with pytest.raises(CheckpointError, match="forward_shuffle_idx is an order none of"):
        import_taming(tmp_path / "m.ckpt", tmp_path / "run", n_head=2)


def test_vqgan_only_import_and_existing_destination(tmp_path: Path) -> None:
    torch.save({"state_dict": _vq_sd()}, tmp_path / "vq.ckpt")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("keep")
    with pytest.raises(ValueError, match="exists and is not an empty directory"):
        import_taming(tmp_path / "vq.ckpt", tmp_path / "taken")
    with pytest.raises(ValueError, match="do not apply"):
        import_taming(tmp_path / "vq.ckpt", tmp_path / "out", n_head=2)
    (tmp_path / "empty").mkdir()
    done = import_taming(tmp_path / "vq.ckpt", tmp_path / "empty")
    assert done.meta is None and load_vqgan(tmp_path / "empty").config == done.vq.config


def test_bad_inputs_name_the_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "x.ckpt"
    torch.save({"global_step": 3, "optimizer_states": []}, path)
    with pytest.raises(CheckpointError, match=rf"{path}: .*without a usable 'state_dict'"):
        load_taming_vqgan(path)
    torch.save({"state_dict": {"model.diffusion_model.x.weight": torch.ones(1)}}, path)
    with pytest.raises(CheckpointError, match=r"not a taming VQGAN.*Stable Diffusion"):
        load_taming_vqgan(path)
    sd = {k: v for k, v in _vq_sd().items() if not k.startswith("quantize.")}
    torch.save({"state_dict": sd}, path)
    with pytest.raises(CheckpointError, match=r"no quantiser.*KL autoencoder"):
        load_taming_vqgan(path)
    sd = _vq_sd()
    del sd["decoder.conv_out.weight"]
    torch.save({"state_dict": sd}, path)
    with pytest.raises(
        CheckpointError, match=r"x\.ckpt: not a taming VQGAN: key 'decoder\.conv_out"
    ):
        load_taming_vqgan(path)
    torch.save({"state_dict": _vq_sd()}, path)
    with pytest.raises(CheckpointError, match=r"x\.ckpt: .*shape mismatch for quantize\.embedding"):
        load_taming_vqgan(path, config=replace(TINY, n_embed=32))
    torch.save({"state_dict": _net2net()}, path)
    with pytest.raises(CheckpointError, match=r"keys under 'first_stage_model\.'.*missing keys"):
        load_taming_vqgan(path, config=replace(TINY, num_res_blocks=2))
