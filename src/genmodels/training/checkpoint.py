"""Training checkpoints: written atomically, resumed exactly.

Layout of ``<out_dir>/checkpoints/step-00001000/``:

* ``model.safetensors`` and ``ema.safetensors``: the weights (LDM/sgm key names);
* ``state.pt``: optimiser, LR schedule, grad scaler, EMA counter, step, data position and the
  RNG states (torch CPU / CUDA, Python, NumPy);
* ``config.yaml``: the run's configuration.

Every file goes into a hidden temporary directory that is fsynced and then renamed into place
(``os.rename`` of a directory is atomic on POSIX), so a kill at any moment leaves either the
previous checkpoints or the new complete one, never a torn one.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

__all__ = [
    "capture_loop",
    "capture_rng",
    "latest_checkpoint",
    "load_checkpoint",
    "restore_loop",
    "restore_rng",
    "resume_from",
    "save_checkpoint",
]

_NAME = re.compile(r"^step-(\d+)$")


def capture_rng() -> dict[str, Any]:
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": np.random.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def capture_loop(step: int, generator: torch.Generator, **stateful: Any) -> dict[str, Any]:
    """The state a training loop resumes from: ``step``, its batch ``generator``, the global
    RNG and the ``state_dict()`` of each named optimiser / module (``opt_d=...``)."""
    state = {"step": step, "generator": generator.get_state(), "rng": capture_rng()}
    return state | {name: obj.state_dict() for name, obj in stateful.items()}


def restore_loop(state: dict[str, Any], generator: torch.Generator, **stateful: Any) -> int:
    """Undo :func:`capture_loop` into ``generator``, the RNG and ``stateful``; returns the step."""
    for name, obj in stateful.items():
        obj.load_state_dict(state[name])
    generator.set_state(state["generator"])
    restore_rng(state["rng"])
    return int(state["step"])


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _weights(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}


def save_checkpoint(
    root: str | Path,
    step: int,
    model: nn.Module,
    ema: nn.Module | None,
    state: dict[str, Any],
    config_text: str,
    keep_last: int = 0,
) -> Path:
    """Write checkpoint ``step`` under ``root`` atomically; keep the newest ``keep_last``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    for stale in root.glob(".tmp-*"):  # left by a writer that was killed
        shutil.rmtree(stale, ignore_errors=True)
    tmp = root / f".tmp-step-{step:08d}-{os.getpid()}"
    tmp.mkdir()
    save_file(_weights(model), tmp / "model.safetensors")
    if ema is not None:
        save_file(_weights(ema), tmp / "ema.safetensors")
    torch.save(state, tmp / "state.pt")
    (tmp / "config.yaml").write_text(config_text)
    for f in tmp.iterdir():
        _fsync(f)
    _fsync(tmp)
    old = None
    if final.exists():  # re-saving the same step: move the old copy aside, then drop it
        old = root / f".tmp-old-step-{step:08d}-{os.getpid()}"
        os.rename(final, old)
    os.rename(tmp, final)
    _fsync(root)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    if keep_last > 0:
        for old in _complete(root)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _complete(root: Path) -> list[Path]:
    """Finished checkpoint directories, oldest first."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found) if (p / "state.pt").is_file()]


def latest_checkpoint(root: str | Path) -> Path | None:
    """The newest complete checkpoint under ``root``, or None."""
    done = _complete(Path(root))
    return done[-1] if done else None


def load_checkpoint(
    path: str | Path, model: nn.Module, ema: nn.Module | None = None
) -> dict[str, Any]:
    """Load weights into ``model`` (and ``ema``) strictly; return the training state dict."""
    path = Path(path)
    if not (path / "state.pt").is_file():
        raise ValueError(f"{path}: not a training checkpoint (state.pt missing)")
    model.load_state_dict(load_file(path / "model.safetensors"), strict=True)
    if ema is not None:
        ema_file = path / "ema.safetensors"
        if not ema_file.is_file():
            raise ValueError(f"{path}: EMA is enabled but ema.safetensors is missing")
        ema.load_state_dict(load_file(ema_file), strict=True)
    return torch.load(path / "state.pt", weights_only=False)


def resume_from(root: str | Path, model: nn.Module, resume: bool, stage: str) -> dict | None:
    """The loop state of the newest checkpoint under ``root`` (weights loaded into ``model``),
    or None (no ``resume``, or no checkpoint: a fresh run)."""
    found = latest_checkpoint(root) if resume else None
    if found is None:
        return None
    state = load_checkpoint(found, model)
    print(f"{stage}: resumed at step {state['step']} from {found}", flush=True)
    return state
