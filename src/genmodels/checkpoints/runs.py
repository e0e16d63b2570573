"""Run-directory formats of ``genmodels train``, read by ``genmodels sample`` / ``vq-sample``
and written by the training tasks (the formats live here; training and sampling both use them).

* A diffusion run: ``<out_dir>/checkpoints/step-N/`` holding ``model.safetensors`` (and
  ``ema.safetensors``) beside the ``config.yaml`` it was trained with (``resolve_checkpoint``,
  ``read_run_config``).
* A VQ run: ``vqgan.safetensors`` (taming key names) + ``vqgan.json`` (its ``VQConfig``), and
  for stage 2 ``transformer.safetensors`` + ``transformer.json`` (its ``TransformerMeta``) in
  the same directory; ``cond_vqgan.*`` for an image-conditional model's own cond stage.

Every file is written atomically; loading is strict and names the file and key on mismatch.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from safetensors.torch import load_file, save_file

from genmodels.configs.vqgan import VQConfig
from genmodels.models.gpt import GPT
from genmodels.models.net2net import TransformerMeta
from genmodels.models.vqgan import VQModel

from .atomic import write_atomic
from .strict import load_strict

__all__ = [
    "load_transformer",
    "load_vqgan",
    "read_run_config",
    "resolve_checkpoint",
    "save_transformer",
    "save_vqgan",
]

_STEP = re.compile(r"^step-(\d+)$")


def resolve_checkpoint(path: str | Path) -> Path:
    """A diffusion checkpoint directory: ``path`` itself, or the newest complete one of the run
    whose ``out_dir`` is ``path`` (complete: weights, config and a manifest or the older
    format's ``state.pt``)."""
    path = Path(path)
    if (path / "model.safetensors").is_file() and (path / "config.yaml").is_file():
        return path
    root = path / "checkpoints"
    if root.is_dir():
        steps = sorted((int(m.group(1)), p) for p in root.iterdir() if (m := _STEP.match(p.name)))
        for _, p in reversed(steps):
            done = (p / "manifest.json").is_file() or (p / "state.pt").is_file()
            if done and (p / "model.safetensors").is_file() and (p / "config.yaml").is_file():
                return p
    raise ValueError(
        f"{path}: not a training run (no checkpoints/step-*/ with model.safetensors and "
        "config.yaml) nor a checkpoint directory"
    )


def read_run_config(path: str | Path) -> dict[str, Any]:
    """The YAML mapping of a run's ``config.yaml`` (its ``task``: ``diffusion`` if absent, as
    runs written before tasks had one)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: cannot read the run config: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    data.setdefault("task", "diffusion")
    return data


def save_vqgan(
    directory: str | Path,
    model: VQModel,
    extra: dict[str, Any] | None = None,
    name: str = "vqgan",
) -> Path:
    """Write ``<name>.safetensors`` + ``<name>.json`` ({"config": ..., **extra}) to ``directory``.

    Each file is replaced atomically (:func:`write_atomic`); the JSON is written last.
    ``name="cond_vqgan"`` stores a transformer's cond-stage VQGAN beside the first stage.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    write_atomic(directory / f"{name}.safetensors", lambda p: save_file(weights, str(p)))
    text = json.dumps({"config": model.config.to_dict()} | (extra or {}), indent=2)
    write_atomic(directory / f"{name}.json", lambda p: p.write_text(text))
    return directory


def load_vqgan(directory: str | Path, name: str = "vqgan") -> VQModel:
    """Rebuild a :class:`VQModel` written by :func:`save_vqgan` (strict key matching)."""
    directory = Path(directory)
    cfg_path, weights_path = directory / f"{name}.json", directory / f"{name}.safetensors"
    for p in (cfg_path, weights_path):
        if not p.is_file():
            raise ValueError(f"not a VQGAN checkpoint directory: {p} is missing")
    cfg = VQConfig.from_dict(json.loads(cfg_path.read_text())["config"])
    model = VQModel(cfg)
    try:
        load_strict(model, load_file(str(weights_path)), "VQModel state dict")
    except ValueError as exc:
        raise ValueError(f"{weights_path}: {exc}") from None
    return model.eval()


def save_transformer(directory: str | Path, gpt: GPT, meta: TransformerMeta) -> Path:
    """Write ``transformer.safetensors`` + ``transformer.json`` to ``directory`` (atomically)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().contiguous().cpu() for k, v in gpt.state_dict().items()}
    write_atomic(directory / "transformer.safetensors", lambda p: save_file(weights, str(p)))
    text = json.dumps(meta.to_dict(), indent=2)
    write_atomic(directory / "transformer.json", lambda p: p.write_text(text))
    return directory


def load_transformer(directory: str | Path) -> tuple[GPT, TransformerMeta]:
    """Rebuild the GPT and its :class:`TransformerMeta` written by :func:`save_transformer`."""
    directory = Path(directory)
    meta_path, weights_path = directory / "transformer.json", directory / "transformer.safetensors"
    for p in (meta_path, weights_path):
        if not p.is_file():
            raise ValueError(f"not a transformer checkpoint directory: {p} is missing")
    meta = TransformerMeta.from_dict(json.loads(meta_path.read_text()))
    gpt = GPT(meta.gpt)
    try:
        load_strict(gpt, load_file(str(weights_path)), "GPT state dict")
    except ValueError as exc:
        raise ValueError(f"{weights_path}: {exc}") from None
    return gpt.eval(), meta
