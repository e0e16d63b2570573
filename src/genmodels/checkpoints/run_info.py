"""What a genmodels training-run folder holds, read from its files alone (for ``genmodels info``).

The layouts written by ``genmodels train`` (see ``training/checkpoint.py``, ``autoencoder_run.py``
and ``vq_config.py``):

* ``<out_dir>/config.yaml`` (``task:`` first; no ``task`` key: a diffusion run) and
  ``<out_dir>/checkpoints/step-XXXXXXXX/`` holding ``model.safetensors`` (+ ``ema.safetensors``,
  ``state.pt``, ``config.yaml``);
* an autoencoder run: ``vae.safetensors`` beside them;
* VQ runs: ``vqgan.safetensors`` + ``vqgan.json`` (+ ``vqgan_run.yaml``), ``transformer.*`` and
  ``transformer_checkpoints/step-*/``;
* one checkpoint folder itself: ``model.safetensors`` + ``config.yaml``.

Nothing is imported from ``training`` (a lower layer describing a higher one's files by name)
and no weights are read: parameter counts come from the safetensors headers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from safetensors import SafetensorError, safe_open

__all__ = ["RunCheckpoint", "RunSummary", "describe_run", "is_run_folder"]

_STEP = re.compile(r"^step-(\d+)$")
_CHECKPOINT_FOLDERS = ("checkpoints", "transformer_checkpoints")
_ARTEFACTS = ("vae.safetensors", "vqgan.safetensors", "vqgan.json", "transformer.safetensors",
              "transformer.json", "cond_vqgan.safetensors", "summary.json", "log.csv")  # fmt: skip
_TASK_FILES = (("vqgan_run.yaml", "vqgan"), ("transformer_run.yaml", "transformer"))


@dataclass(frozen=True)
class RunCheckpoint:
    folder: Path
    step: int
    complete: bool  # has model.safetensors


@dataclass
class RunSummary:
    path: Path
    task: str
    checkpoints: list[RunCheckpoint] = field(default_factory=list)  # oldest first
    artefacts: list[str] = field(default_factory=list)  # files present among _ARTEFACTS
    parameters: int | None = None  # of the newest complete checkpoint's model.safetensors

    @property
    def newest(self) -> RunCheckpoint | None:
        done = [c for c in self.checkpoints if c.complete]
        return done[-1] if done else None


def _step_folders(root: Path) -> list[RunCheckpoint]:
    found = []
    for name in _CHECKPOINT_FOLDERS:
        folder = root / name
        if folder.is_dir():
            for entry in folder.iterdir():
                if (m := _STEP.match(entry.name)) and entry.is_dir():
                    done = (entry / "model.safetensors").is_file()
                    found.append(RunCheckpoint(entry, int(m.group(1)), done))
    return sorted(found, key=lambda c: (c.step, str(c.folder)))


def is_run_folder(path: str | Path) -> bool:
    """A training run's ``out_dir`` (or one of its checkpoint folders)."""
    path = Path(path)
    if not path.is_dir():
        return False
    if (path / "model.safetensors").is_file() and (path / "config.yaml").is_file():
        return True
    has_steps = any(c.complete for c in _step_folders(path))
    has_config = (path / "config.yaml").is_file() or any(
        (path / name).is_file() for name, _ in _TASK_FILES
    )
    named = any((path / name).is_file() for name in _ARTEFACTS[:5])
    return named or (has_config and has_steps)


def _task(path: Path) -> str:
    for name, task in _TASK_FILES:
        if (path / name).is_file():
            return task
    config = path / "config.yaml"
    if not config.is_file():
        return "vqgan" if (path / "vqgan.json").is_file() else "unknown (no config.yaml)"
    try:
        data = yaml.safe_load(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        return f"unknown ({config} unreadable: {' '.join(str(exc).split())[:80]})"
    if not isinstance(data, dict):
        return f"unknown ({config} is not a mapping)"
    return str(data.get("task", "diffusion"))


def _parameters(weights: Path) -> int | None:
    """Element count from the safetensors header (no tensor data read)."""
    if not weights.is_file():  # a FIFO would block safe_open
        return None
    try:
        with safe_open(str(weights), framework="pt") as f:
            total = 0
            for key in f.keys():
                n = 1
                for dim in f.get_slice(key).get_shape():
                    n *= dim
                total += n
            return total
    except (SafetensorError, OSError):
        return None


def describe_run(path: str | Path) -> RunSummary:
    """Task, checkpoints (steps) and artefacts of a run folder (see the module docstring)."""
    path = Path(path)
    if not is_run_folder(path):
        raise ValueError(
            f"{path}: not a genmodels training run (no config.yaml with checkpoints/step-*/"
            "model.safetensors, vae.safetensors, vqgan.json or transformer.json)"
        )
    if (path / "model.safetensors").is_file() and (m := _STEP.match(path.name)):
        checkpoints = [RunCheckpoint(path, int(m.group(1)), True)]
    else:
        checkpoints = _step_folders(path)
    summary = RunSummary(path, _task(path), checkpoints)
    summary.artefacts = [name for name in _ARTEFACTS if (path / name).is_file()]
    newest = summary.newest
    if newest is not None:
        summary.parameters = _parameters(newest.folder / "model.safetensors")
    return summary
