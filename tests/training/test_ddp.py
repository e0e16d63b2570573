"""DDP via torchrun (gloo, 2 CPU processes) equals one process with the same global batch."""

from __future__ import annotations

import subprocess
import sys

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
