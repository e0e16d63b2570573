"""The run folder under attack: unpicklable state, a second writer, a folder holding another
run, Ctrl-C, damaged checkpoints, changed configs, NaN losses, and runs of older versions."""

from __future__ import annotations

import os
import pickle
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from genmodels.cli.main import main
from genmodels.training.checkpoint import CheckpointDamaged, checkpoint_dirs, verify_checkpoint
from genmodels.training.config import EMAConfig, OptimConfig
from genmodels.training.diffusion import Trainer
from genmodels.training.run import TrainingDiverged
from genmodels.training.run_dir import RunExists, RunLock
from tests.training.helpers import ROOT, env, tiny_config, train_cmd, write_config

LEGACY = ROOT / "tests" / "fixtures" / "legacy"


class _Boom:
    """Unpickling this runs ``os.system``: what a crafted state.pt would do."""

    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def _two_checkpoints(tmp_path: Path) -> Path:
    Trainer(tiny_config(tmp_path, steps=2, ckpt_every=1, ckpt_minutes=0)).fit()
    return tmp_path / "checkpoints"


def test_malicious_state_is_refused_not_executed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = _two_checkpoints(tmp_path / "run")
    newest = root / "step-00000002"
    with (newest / "state.pt").open("wb") as f:  # a pickle that runs code, manifest updated
        pickle.dump({"step": _Boom()}, f)
    import hashlib
    import json

    manifest = json.loads((newest / "manifest.json").read_text())
    manifest["files"]["state.pt"] = hashlib.sha256((newest / "state.pt").read_bytes()).hexdigest()
    (newest / "manifest.json").write_text(json.dumps(manifest))
    again = Trainer(tiny_config(tmp_path / "run", steps=2))
    with pytest.raises(CheckpointDamaged, match=r"state.pt: refused: not a plain training state"):
        again.resume()
    assert not (tmp_path / "PWNED").exists()


def test_state_loads_with_weights_only(tmp_path):
    root = _two_checkpoints(tmp_path)
    state = torch.load(root / "step-00000002" / "state.pt", weights_only=True)
    assert state["step"] == 2 and isinstance(state["rng"]["numpy"]["keys"], torch.Tensor)


def test_damaged_newest_checkpoint_falls_back_to_an_intact_one(tmp_path, capsys):
    root = _two_checkpoints(tmp_path)
    newest = root / "step-00000002" / "model.safetensors"
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped bit in the weights
    newest.write_bytes(bytes(data))
    with pytest.raises(CheckpointDamaged, match="does not match its hash"):
        verify_checkpoint(root / "step-00000002")
    again = Trainer(tiny_config(tmp_path, steps=2))
    assert again.resume() and again.step == 1
    assert "skipping" in capsys.readouterr().out
    # a stray folder holding part of a checkpoint, and none intact: a clear refusal
    (root / "step-00000001" / "state.pt").write_bytes(b"")
    (root / "step-00000009").mkdir()
    (root / "step-00000009" / "model.safetensors").write_bytes(b"x")
    with pytest.raises(CheckpointDamaged, match="no intact checkpoint"):
        Trainer(tiny_config(tmp_path, steps=2)).resume()


def test_folder_holding_a_run_is_refused_unless_resume_or_overwrite(tmp_path):
    Trainer(tiny_config(tmp_path, steps=2)).fit()
    with pytest.raises(RunExists, match="--resume.*--overwrite"):
        Trainer(tiny_config(tmp_path, steps=3)).fit()
    Trainer(tiny_config(tmp_path, steps=1), overwrite=True).fit()
    assert [p.name for p in checkpoint_dirs(tmp_path / "checkpoints")] == ["step-00000001"]
    cfg = write_config(tiny_config(tmp_path, steps=2), tmp_path.parent / "again.yaml")
    assert main(["train", str(cfg)]) == 2  # the CLI refuses before any work


def test_second_writer_gets_the_holders_pid(tmp_path):
    lock = RunLock(tmp_path).acquire()
    try:
        with pytest.raises(RunExists, match=f"PID {os.getpid()}"):
            Trainer(tiny_config(tmp_path, steps=1)).fit()
    finally:
        lock.release()
    Trainer(tiny_config(tmp_path, steps=1)).fit()  # released: it can start


def test_changed_config_on_resume(tmp_path, capsys):
    Trainer(tiny_config(tmp_path, steps=2)).fit()
    other = Trainer(tiny_config(tmp_path, steps=4, optim=OptimConfig(lr=0.5)))
    with pytest.raises(ValueError, match=r"optim.lr: 0.001 -> 0.5"):
        other.resume()
    longer = Trainer(tiny_config(tmp_path, steps=4))  # more steps: applied and said so
    assert longer.resume()
    assert "steps changed 2 -> 4" in capsys.readouterr().out
    longer.fit()
    assert longer.step == 4


def test_nan_loss_stops_without_a_nan_checkpoint(tmp_path):
    cfg = tiny_config(tmp_path, steps=3, ema=EMAConfig(enabled=False))
    trainer = Trainer(cfg)
    with torch.no_grad():
        next(trainer.model.parameters()).fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match="step 1: the loss is nan"):
        trainer.fit()
    assert checkpoint_dirs(tmp_path / "checkpoints") == []


def test_resume_from_nan_weights_is_refused(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, steps=2, ema=EMAConfig(enabled=False)))
    trainer.train_step()
    with torch.no_grad():
        next(trainer.model.parameters()).fill_(float("inf"))
    trainer.save_checkpoint()
    with pytest.raises(TrainingDiverged, match="NaN / infinite weights"):
        Trainer(tiny_config(tmp_path, steps=2, ema=EMAConfig(enabled=False))).resume()


def test_sigint_saves_a_checkpoint_and_resume_finishes_the_run(tmp_path):
    kw = dict(steps=400, ckpt_every=0, ckpt_minutes=0, ema=EMAConfig(enabled=False))
    cfg = write_config(tiny_config(tmp_path / "run", **kw), tmp_path / "run.yaml")
    proc = subprocess.Popen(train_cmd(cfg), env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    log = tmp_path / "run" / "log.csv"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if log.is_file() and len(log.read_text().splitlines()) > 5:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "stopped at step" in out
    (stopped,) = checkpoint_dirs(tmp_path / "run" / "checkpoints")
    step = int(stopped.name.split("-")[1])
    assert 0 < step < 400
    verify_checkpoint(stopped)
    resumed = subprocess.run(train_cmd(cfg, "--resume", "steps=400"), env=env(),
                             capture_output=True, text=True, timeout=300)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resumed at step {step}" in resumed.stdout


def test_runs_written_before_the_refactor_still_load(tmp_path):
    from genmodels.checkpoints.runs import load_transformer, load_vqgan
    from genmodels.checkpoints.vae import load_vae
    from genmodels.pipelines.trained import load_run

    run = load_run(LEGACY / "diffusion-run")
    assert run.weights == "ema" and run.sample_shape == (1, 8, 8)
    vae = load_vae(LEGACY / "autoencoder-run")
    assert vae.config.scale_factor != 1.0  # scale_by_std was stored in the file
    vq = load_vqgan(LEGACY / "vq-run")
    gpt, meta = load_transformer(LEGACY / "vq-run")
    assert meta.n_codes == vq.n_codes == 16
    out = tmp_path / "out"
    assert main(["sample", str(LEGACY / "diffusion-run"), "--n", "2", "--outdir", str(out)]) == 0
    # its pickled training state is not loaded: resuming it is refused, with the reason
    shutil.copytree(LEGACY / "diffusion-run", tmp_path / "old")
    cfg = write_config(tiny_config(tmp_path / "old"), tmp_path / "old.yaml")
    assert main(["train", str(cfg), "--resume"]) == 2


def test_offset_noise_and_zero_terminal_snr_reach_training(tmp_path):
    cfg = tiny_config(tmp_path, steps=1)
    path = write_config(cfg, tmp_path.parent / f"{tmp_path.name}.yaml")
    argv = ["train", str(path), "objective.kind=v", "objective.zero_terminal_snr=true",
            "objective.offset_noise=0.1", "--print-config"]  # fmt: skip
    assert main(argv) == 0
    from genmodels.training.tasks import build_config

    cfg = build_config("diffusion", path, argv[2:5])
    trainer = Trainer(cfg)
    assert trainer.loss_fn.offset_noise == 0.1
    assert float(trainer.denoiser.sigmas[-1]) > 1e3  # the rescaled, near-infinite last sigma
    trainer.fit()
    weights = load_file(tmp_path / "checkpoints" / "step-00000001" / "model.safetensors")
    assert all(torch.isfinite(v).all() for v in weights.values())


def test_train_without_arguments_shows_usage(capsys):
    assert main(["train"]) == 2
    out = capsys.readouterr()
    assert "usage:" in out.out + out.err and "--preset" in out.out
    assert not Path("runs/default").exists()


def test_overrides_on_both_sides_of_resume(tmp_path):
    cfg = write_config(tiny_config(tmp_path / "run", steps=2), tmp_path / "run.yaml")
    assert main(["train", str(cfg), "steps=1"]) == 0
    # flags after overrides, overrides after flags: both apply
    assert main(["train", str(cfg), "--resume", "steps=2", "log_every=1"]) == 0
    assert main(["train", str(cfg), "steps=3", "--resume", "log_every=1"]) == 0
    names = [p.name for p in checkpoint_dirs(tmp_path / "run" / "checkpoints")]
    assert names[-1] == "step-00000003"
    assert main(["train", str(cfg), "--resume", "--overwrite"]) == 2
