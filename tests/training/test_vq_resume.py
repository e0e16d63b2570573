"""``genmodels train task=vqgan|transformer --resume``: a run resumed from its mid-run checkpoint
ends with the same weights (bit for bit) as the uninterrupted run (tiny models on 8x8 digits)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

from genmodels.cli.main import main

from .test_vq_configs import TINY_VQGAN, _tiny_transformer


def _weights_equal(a: Path, b: Path, name: str) -> bool:
    x, y = load_file(a / name), load_file(b / name)
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def _cut(full: Path, cut: Path, ckpts: str, step: str) -> None:
    """``cut``: ``full`` as it was right after its ``step`` checkpoint (no final files)."""
    (cut / ckpts).mkdir(parents=True)
    shutil.copytree(full / ckpts / step, cut / ckpts / step)


def _vqgan_args(tmp_path: Path) -> list[str]:
    # EMA codebook + k-means start + dead-code restarts (64 codes: some die, and their restarts
    # draw from the global RNG); the PatchGAN is on from step 2
    run = TINY_VQGAN | {"ckpt_every": 4, "keep_last": 0}
    run["model"] = run["model"] | {"dead_code_steps": 1, "n_embed": 64}
    run["train"] = run["train"] | {"steps": 8}
    path = tmp_path / "vqgan.yaml"
    path.write_text(yaml.safe_dump(run))
    return ["train", str(path)]


def test_vqgan_resume_equals_the_uninterrupted_run(tmp_path: Path) -> None:
    args = _vqgan_args(tmp_path)
    full, cut, fresh = tmp_path / "full", tmp_path / "cut", tmp_path / "fresh"
    assert main([*args, f"out_dir={full}"]) == 0
    assert sorted(p.name for p in (full / "checkpoints").iterdir()) == ["step-00000004"]
    state = torch.load(full / "checkpoints/step-00000004/state.pt", weights_only=False)
    assert state["step"] == 4 and "d_loss" in state["records"][-1]  # the GAN was on
    buffers = load_file(full / "checkpoints/step-00000004/model.safetensors")
    assert bool(buffers["quantize.initted"])  # k-means start, EMA and dead-code state saved
    assert {"quantize.embedding.cluster_size", "quantize.unused_steps"} <= buffers.keys()
    _cut(full, cut, "checkpoints", "step-00000004")
    assert main([*args, f"out_dir={cut}", "--resume"]) == 0
    assert _weights_equal(full, cut, "vqgan.safetensors")
    a, b = (json.loads((d / "vqgan.json").read_text()) for d in (full, cut))
    assert [r["step"] for r in b["log"]] == [2, 4, 6, 8]
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in a["log"]]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in b["log"]]
    assert main([*args, f"out_dir={fresh}", "--resume"]) == 0  # no checkpoint: a fresh run
    assert _weights_equal(full, fresh, "vqgan.safetensors")


def test_transformer_resume_equals_the_uninterrupted_run(tmp_path: Path) -> None:
    vq_dir = tmp_path / "vq"
    assert main([*_vqgan_args(tmp_path), f"out_dir={vq_dir}", "train.steps=5"]) == 0
    run = _tiny_transformer(vq_dir, vq_dir) | {"ckpt_every": 3, "keep_last": 1}
    run["gpt"] |= {"resid_pdrop": 0.1}  # dropout draws from the global RNG
    run["train"] |= {"steps": 7, "log_every": 2, "pkeep": 0.5}
    path = tmp_path / "transformer.yaml"
    path.write_text(yaml.safe_dump(run))
    full, cut = vq_dir, tmp_path / "cut"  # the full run shares its directory with the VQGAN
    assert main(["train", str(path)]) == 0
    assert [p.name for p in (full / "transformer_checkpoints").iterdir()] == ["step-00000006"]
    assert (full / "checkpoints").is_dir()  # the VQGAN's own checkpoints are untouched
    _cut(full, cut, "transformer_checkpoints", "step-00000006")
    assert main(["train", str(path), f"out_dir={cut}", "--resume"]) == 0
    assert _weights_equal(full, cut, "transformer.safetensors")
    log = json.loads((cut / "transformer_log.json").read_text())
    assert [r["step"] for r in log] == [2, 4, 6, 7]
