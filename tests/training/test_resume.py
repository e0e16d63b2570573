"""Checkpoints: atomic layout, keep-last-k, and exact resume after SIGKILL."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest
import torch

from genmodels.training.checkpoint import latest_checkpoint
from genmodels.training.config import EMAConfig, OptimConfig
from genmodels.training.diffusion import Trainer
from tests.training.helpers import env, final_weights, tiny_config, train_cmd, write_config


def test_resume_in_process_continues_exactly(tmp_path):
    kw = dict(steps=6, ckpt_every=3, optim=OptimConfig(schedule="cosine", warmup_steps=2))
    full = Trainer(tiny_config(tmp_path / "full", **kw))
    full.fit()
    first = Trainer(tiny_config(tmp_path / "part", **kw))
    for _ in range(3):
        first.train_step()
    first.save_checkpoint()
    torch.manual_seed(123)  # the resumed run must not depend on the process's RNG state
    second = Trainer(tiny_config(tmp_path / "part", **kw))
    assert second.resume() and second.step == 3
    second.fit()
    for a, b in zip(full.model.state_dict().values(), second.model.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(full.ema.model.state_dict().values(), second.ema.model.state_dict().values()):
        assert torch.equal(a, b)
    assert second.optim.scheduler.last_epoch == full.optim.scheduler.last_epoch == 6


def test_keep_last_and_torn_checkpoints_are_ignored(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, steps=4, ckpt_every=1, keep_last=2))
    trainer.fit()
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["step-00000003", "step-00000004"]
    files = {p.name for p in (root / "step-00000004").iterdir()}
    assert files == {"model.safetensors", "ema.safetensors", "state.pt", "config.yaml",
                     "manifest.json"}  # fmt: skip
    # a temp dir left by a killed writer, and a later dir without state.pt, are not checkpoints
    (root / ".step-00000009.tmp-1").mkdir()
    (root / "step-00000010").mkdir()
    assert latest_checkpoint(root).name == "step-00000004"
    assert latest_checkpoint(tmp_path / "missing") is None


def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
    kw = dict(steps=40, ckpt_every=5, keep_last=3, ema=EMAConfig(power=0.75))
    ref_cfg = write_config(tiny_config(tmp_path / "ref", **kw), tmp_path / "ref.yaml")
    run_cfg = write_config(tiny_config(tmp_path / "run", **kw), tmp_path / "run.yaml")
    ref = subprocess.Popen(train_cmd(ref_cfg), env=env(), stderr=subprocess.PIPE, text=True)

    proc = subprocess.Popen(train_cmd(run_cfg), env=env(), stderr=subprocess.PIPE, text=True)
    root = tmp_path / "run" / "checkpoints"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        ckpt = latest_checkpoint(root)
        if ckpt is not None and int(ckpt.name.split("-")[1]) >= 10:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.wait(timeout=60)
    if proc.returncode != -signal.SIGKILL:
        pytest.fail(f"the run was not killed mid-training (rc={proc.returncode})")
    killed_at = int(latest_checkpoint(root).name.split("-")[1])
    assert killed_at < 40

    resumed = subprocess.run(
        train_cmd(run_cfg, "--resume"), env=env(), capture_output=True, text=True, timeout=240
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resumed at step {killed_at}" in resumed.stdout
    assert ref.wait(timeout=240) == 0, ref.stderr.read()[-2000:]
    for name in ("model", "ema"):
        a, b = (
            final_weights(tmp_path / "ref", 40, name),
            final_weights(tmp_path / "run", 40, name),
        )
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)


def test_resaving_a_step_replaces_it_and_a_new_run_clears_stale_temp_dirs(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, steps=2, ema=EMAConfig(enabled=False)))
    root = tmp_path / "checkpoints"
    trainer.train_step()
    first = trainer.save_checkpoint()
    with torch.no_grad():
        next(trainer.model.parameters()).add_(1.0)
    again = trainer.save_checkpoint()
    assert again == first and sorted(p.name for p in root.iterdir()) == ["step-00000001"]
    (root / ".step-00000007.tmp-99999").mkdir()  # a killed writer's leftovers
    (root / ".old-step-00000001.tmp-99999").mkdir()
    (tmp_path / ".config.yaml.tmp-99999-0").write_text("partial")
    other = Trainer(tiny_config(tmp_path, steps=2, ema=EMAConfig(enabled=False)))
    assert other.resume()
    for a, b in zip(trainer.model.parameters(), other.model.parameters()):
        assert torch.equal(a, b)
    other.fit()  # the run holds the folder's lock: what killed writers left goes
    assert sorted(p.name for p in root.iterdir()) == ["step-00000001", "step-00000002"]
    assert not list(tmp_path.glob(".*tmp*"))
