"""``genmodels train task=vqgan|transformer --resume``: a run resumed from its mid-run checkpoint
ends with the same weights (bit for bit) and the same log as the uninterrupted run (tiny models
on 8x8 digits)."""

from __future__ import annotations

import csv
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


def _log(path: Path) -> list[dict[str, str]]:
    """The CSV log's rows without the timing column."""
    with path.open(newline="") as f:
        return [{k: v for k, v in r.items() if k != "images_per_s"} for r in csv.DictReader(f)]


def _cut(full: Path, cut: Path, ckpts: str, step: str, log: str) -> None:
    """``cut``: ``full`` as it was right after its ``step`` checkpoint, killed later (its log
    holds rows past the checkpoint, there are no final files)."""
    (cut / ckpts).mkdir(parents=True)
    shutil.copytree(full / ckpts / step, cut / ckpts / step)
    shutil.copyfile(full / log, cut / log)


def _vqgan_args(tmp_path: Path) -> list[str]:
    # EMA codebook + k-means start + dead-code restarts (64 codes: some die, and their restarts
    # draw from the global RNG); the PatchGAN is on from step 2
    run = TINY_VQGAN | {"ckpt_every": 4, "keep_last": 0, "steps": 8}
    run["model"] = run["model"] | {"dead_code_steps": 1, "n_embed": 64}
    path = tmp_path / "vqgan.yaml"
    path.write_text(yaml.safe_dump(run))
    return ["train", str(path)]


def test_vqgan_resume_equals_the_uninterrupted_run(tmp_path: Path) -> None:
    args = _vqgan_args(tmp_path)
    full, cut, fresh = tmp_path / "full", tmp_path / "cut", tmp_path / "fresh"
    assert main([*args, f"out_dir={full}"]) == 0
    # the mid-run checkpoint and the final one (keep_last 0: all kept)
    ckpts = full / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-00000004", "step-00000008"]
    mid = ckpts / "step-00000004"
    assert {"model.safetensors", "discriminator.safetensors", "state.pt", "manifest.json"} <= {
        p.name for p in mid.iterdir()
    }
    state = torch.load(mid / "state.pt", weights_only=True)  # plain tensors and containers
    assert state["step"] == 4 and state["opt_d"]["optimizer"]["state"]  # the GAN was on
    buffers = load_file(mid / "model.safetensors")
    assert bool(buffers["quantize.initted"])  # k-means start, EMA and dead-code state saved
    assert {"quantize.embedding.cluster_size", "quantize.unused_steps"} <= buffers.keys()
    _cut(full, cut, "checkpoints", "step-00000004", "log.csv")
    assert main([*args, f"out_dir={cut}", "--resume"]) == 0
    assert _weights_equal(full, cut, "vqgan.safetensors")
    a, b = _log(full / "log.csv"), _log(cut / "log.csv")
    assert [int(r["step"]) for r in b] == [2, 4, 6, 8]  # rows past the checkpoint replaced
    assert a == b
    final_a, final_b = (json.loads((d / "vqgan.json").read_text())["final"] for d in (full, cut))
    final_a.pop("images_per_s"), final_b.pop("images_per_s")
    assert final_a == final_b
    assert main([*args, f"out_dir={fresh}", "--resume"]) == 0  # no checkpoint: a fresh run
    assert _weights_equal(full, fresh, "vqgan.safetensors")


def test_transformer_resume_equals_the_uninterrupted_run(tmp_path: Path) -> None:
    vq_dir = tmp_path / "vq"
    assert main([*_vqgan_args(tmp_path), f"out_dir={vq_dir}", "steps=5"]) == 0
    vq_ckpts = sorted(p.name for p in (vq_dir / "checkpoints").iterdir())
    run = _tiny_transformer(vq_dir, vq_dir) | {"ckpt_every": 3, "keep_last": 2}
    run["model"] |= {"resid_pdrop": 0.1}  # dropout draws from the global RNG
    run |= {"steps": 7, "log_every": 2, "pkeep": 0.5}
    path = tmp_path / "transformer.yaml"
    path.write_text(yaml.safe_dump(run))
    full, cut = vq_dir, tmp_path / "cut"  # the full run shares its directory with the VQGAN
    assert main(["train", str(path)]) == 0
    # steps 3 and 6 mid-run and 7 at the end; the newest keep_last=2 kept
    names = sorted(p.name for p in (full / "transformer_checkpoints").iterdir())
    assert names == ["step-00000006", "step-00000007"]
    # the VQGAN's own checkpoints are untouched
    assert sorted(p.name for p in (full / "checkpoints").iterdir()) == vq_ckpts
    _cut(full, cut, "transformer_checkpoints", "step-00000006", "transformer_log.csv")
    assert main(["train", str(path), f"out_dir={cut}", "--resume"]) == 0
    assert _weights_equal(full, cut, "transformer.safetensors")
    log = _log(cut / "transformer_log.csv")
    assert [int(r["step"]) for r in log] == [2, 4, 6, 7]
    assert log == _log(full / "transformer_log.csv")
