"""DDP via torchrun (gloo, 2 CPU processes) equals one process with the same global batch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from genmodels.models.unet import UNetModel
from genmodels.training.config import DataConfig, OptimConfig
from tests.training.helpers import (
    TINY_UNET,
    env,
    final_weights,
    run_train,
    tiny_config,
    write_config,
)


def test_two_ranks_equal_one_process(tmp_path):
    kw = dict(steps=4, data=DataConfig(dataset="digits", size=8, batch_size=8),
              optim=OptimConfig(lr=1e-3, grad_accum=2), device="cpu")  # fmt: skip
    one = write_config(tiny_config(tmp_path / "one", **kw), tmp_path / "one.yaml")
    two = write_config(tiny_config(tmp_path / "two", **kw), tmp_path / "two.yaml")
    single = run_train(one)
    assert single.returncode == 0, single.stderr[-2000:]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "genmodels.cli.main", "train", str(two)]  # fmt: skip
    ddp = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    a, b = final_weights(tmp_path / "one", 4), final_weights(tmp_path / "two", 4)
    torch.manual_seed(0)  # the trainer's initial weights
    init = UNetModel(TINY_UNET).state_dict()
    # Adam normalises each update, so float rounding in the all-reduce shows up in parameters
    # whose gradients are nearly zero: compare against how far the weights moved
    moved = max(float((a[k] - init[k]).abs().max()) for k in a)
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert moved > 2e-3 and diff < 0.03 * moved, (diff, moved)
    log = (tmp_path / "two" / "log.csv").read_text().splitlines()
    assert len(log) == 5  # header + 4 steps, written by rank 0 only


def test_autoencoder_two_ranks_equal_one_process(tmp_path):
    """Every task trains under DDP: the KL autoencoder (its gradients averaged by hand, the
    posterior noise drawn for the global batch) on 2 gloo ranks equals one process."""
    from genmodels.training.task_configs import dump_config
    from genmodels.training.tasks import build_config

    def config(name: str) -> Path:
        overrides = ["steps=3", "data.batch_size=8", "log_every=1", "sample_every=0",
                     "device=cpu", "progress=false", f"out_dir={tmp_path / name}"]  # fmt: skip
        cfg = build_config("autoencoder", None, overrides, preset="autoencoder-digits")
        return dump_config(cfg, tmp_path / f"{name}.yaml") and tmp_path / f"{name}.yaml"

    single = run_train(config("one"))
    assert single.returncode == 0, single.stderr[-2000:]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "genmodels.cli.main", "train", str(config("two"))]  # fmt: skip
    ddp = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    a, b = final_weights(tmp_path / "one", 3), final_weights(tmp_path / "two", 3)
    # conv biases feeding a GroupNorm get gradients that are zero up to rounding, which Adam's
    # g / sqrt(v) turns into lr-sized steps of either sign; every other weight matches
    differ = sum(int(((a[k] - b[k]).abs() > 1e-5).sum()) for k in a)
    total = sum(v.numel() for v in a.values())
    assert differ < 1e-3 * total, (differ, total)
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a if not k.endswith("bias"))
    one = (tmp_path / "one" / "log.csv").read_text().splitlines()
    two = (tmp_path / "two" / "log.csv").read_text().splitlines()
    assert len(two) == 4 and one[1].split(",")[1][:6] == two[1].split(",")[1][:6]  # loss
