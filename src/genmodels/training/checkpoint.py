"""Training checkpoints: written atomically, verified on load, resumed exactly, never unpickled
into code.

Layout of ``<out_dir>/checkpoints/step-00001000/``:

* ``<name>.safetensors``: the weights of each module the task saves (``model``, ``ema``,
  ``discriminator``, ...; original key names);
* ``state.pt``: optimiser, LR schedule, grad scaler, EMA counter, step, log window, generators
  and RNG states, as tensors and plain containers only, so it loads with
  ``torch.load(weights_only=True)``: a crafted file cannot run code, it is refused;
* ``config.yaml``: the run's configuration;
* ``manifest.json`` (written last): the step and the SHA-256 of every other file.

Everything goes into a hidden temporary directory that is fsynced and renamed into place
(``os.rename`` of a directory is atomic on POSIX), so a kill leaves the previous checkpoints or
the new complete one. On resume each candidate is checked against its manifest, newest first; a
damaged one (missing, truncated or bit-flipped file) is skipped with a message naming what is
wrong, and the newest intact one is used.
"""

from __future__ import annotations

import hashlib
import json
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

from genmodels.checkpoints.atomic import TMP_MARK, fsync_path
from genmodels.checkpoints.strict import load_strict

__all__ = [
    "CheckpointDamaged",
    "capture_rng",
    "checkpoint_dirs",
    "latest_checkpoint",
    "load_state",
    "restore_rng",
    "write_checkpoint",
    "verify_checkpoint",
]

FORMAT = 2
MANIFEST = "manifest.json"
_NAME = re.compile(r"^step-(\d+)$")


class CheckpointDamaged(ValueError):
    """A checkpoint directory that is incomplete, corrupt or unsafe to load."""


# ---- RNG states as tensors (weights_only-loadable) ----------------------------------------------


def capture_rng() -> dict[str, Any]:
    """The global RNG states (torch CPU / CUDA, Python, NumPy) as tensors and plain values."""
    version, keys, gauss = random.getstate()
    kind, np_keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": {"version": version, "keys": torch.tensor(keys, dtype=torch.int64),
                   "gauss": gauss},
        "numpy": {"kind": kind, "keys": torch.from_numpy(np_keys.astype(np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
    }  # fmt: skip
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py["version"], tuple(int(k) for k in py["keys"].tolist()), py["gauss"]))
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["cached"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---- writing -------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _weights(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}


def write_checkpoint(
    root: str | Path,
    step: int,
    modules: dict[str, nn.Module],
    state: dict[str, Any],
    config_text: str,
    keep_last: int = 0,
) -> Path:
    """Write checkpoint ``step`` under ``root`` atomically; keep the newest ``keep_last``.

    ``modules``: name -> module whose weights go to ``<name>.safetensors``; ``state``: tensors
    and plain containers (checked: it must load with ``weights_only=True``).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    tmp = root / f".step-{step:08d}{TMP_MARK}{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        for name, module in modules.items():
            save_file(_weights(module), tmp / f"{name}.safetensors")
        torch.save(state, tmp / "state.pt")
        (tmp / "config.yaml").write_text(config_text)
        files = {f.name: _sha256(f) for f in sorted(tmp.iterdir())}
        manifest = {"format": FORMAT, "step": step, "files": files}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        for f in tmp.iterdir():
            fsync_path(f)
        fsync_path(tmp)
        old = None
        if final.exists():  # re-saving the same step: move the old copy aside, then drop it
            old = root / f".old-step-{step:08d}{TMP_MARK}{os.getpid()}"
            os.rename(final, old)
        os.rename(tmp, final)
        fsync_path(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    if keep_last > 0:
        for stale in checkpoint_dirs(root)[:-keep_last]:
            shutil.rmtree(stale, ignore_errors=True)
    return final


# ---- reading -------------------------------------------------------------------------------------


def checkpoint_dirs(root: str | Path) -> list[Path]:
    """``step-N`` directories under ``root`` that claim to be complete (a manifest, or the
    ``state.pt`` of the format before manifests), oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found) if (p / MANIFEST).is_file() or (p / "state.pt").is_file()]


def verify_checkpoint(path: str | Path) -> None:
    """Check every file of checkpoint ``path`` against its manifest; CheckpointDamaged names
    the first problem."""
    path = Path(path)
    manifest_file = path / MANIFEST
    if not manifest_file.is_file():
        if (path / "state.pt").is_file():
            raise CheckpointDamaged(
                f"{path}: written by an older genmodels (pickled state.pt, no manifest); its "
                "training state cannot be loaded safely, so it cannot be resumed (its weights "
                "still load for sampling)"
            )
        raise CheckpointDamaged(f"{path}: incomplete checkpoint (no {MANIFEST})")
    try:
        manifest = json.loads(manifest_file.read_text())
        files = dict(manifest["files"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointDamaged(f"{manifest_file}: unreadable manifest ({exc})") from None
    for name, digest in files.items():
        f = path / name
        if not f.is_file():
            raise CheckpointDamaged(f"{f}: missing")
        if _sha256(f) != digest:
            raise CheckpointDamaged(f"{f}: content does not match its hash (truncated or damaged)")


def latest_checkpoint(root: str | Path, verify: bool = False) -> Path | None:
    """The newest complete checkpoint under ``root`` (the newest intact one when ``verify``;
    each damaged one skipped is reported on stdout), or None."""
    for path in reversed(checkpoint_dirs(root)):
        if not verify:
            return path
        try:
            verify_checkpoint(path)
            return path
        except CheckpointDamaged as exc:
            print(f"skipping damaged checkpoint: {exc}", flush=True)
    return None


def load_state(path: str | Path, modules: dict[str, nn.Module]) -> dict[str, Any]:
    """Load the weights of checkpoint ``path`` into ``modules`` (strictly, by name) and return
    its training state; the checkpoint must pass :func:`verify_checkpoint`."""
    path = Path(path)
    verify_checkpoint(path)
    for name, module in modules.items():
        f = path / f"{name}.safetensors"
        if not f.is_file():
            raise CheckpointDamaged(f"{path}: {f.name} is missing (this run saves {name!r})")
        try:
            load_strict(module, load_file(f), f"{f}")
        except ValueError as exc:
            raise CheckpointDamaged(f"{f}: {exc}") from None
    try:
        return torch.load(path / "state.pt", map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle.UnpicklingError and friends: refuse, never execute
        raise CheckpointDamaged(
            f"{path / 'state.pt'}: refused: not a plain training state ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200]})"
        ) from None
