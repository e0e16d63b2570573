"""The training tasks and the one way their configs are built.

    cfg = build_config("autoencoder", "run.yaml", ["optim.lr=1e-4", "steps=2000"])
    TASKS[task_of(cfg)].train(cfg, resume=True)

``TASKS`` maps each ``task:`` name to its config class and its training function (a new task,
e.g. fine-tuning, adds one entry). Every config is built the same way: the task's defaults or a
preset (``presets.py``), then a YAML file (a section gives only the keys it changes), then
``key=value`` overrides; ``model:`` may name a preset of the task's architecture. Keys of the
older per-task layouts (``train.lr``, ``train.steps``, ``gpt.n_layer``, ...) are refused with a
message naming the key that replaced them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genmodels.configs.autoencoder import get_autoencoder_config
from genmodels.configs.io import (
    apply_overrides,
    config_from_dict,
    config_to_dict,
    merge_dicts,
    parse_value,
    read_yaml,
)
from genmodels.configs.unet import UNET_PRESETS
from genmodels.configs.vqgan import get_vqgan_config

from .autoencoder import train_autoencoder
from .diffusion import train_diffusion
from .finetune import train_finetune
from .presets import PRESETS
from .task_configs import CONFIG_CLASSES, TaskConfig, task_of
from .transformer import OWNED as TRANSFORMER_OWNED
from .transformer import train_transformer
from .vqgan import train_vqgan

__all__ = ["TASKS", "Task", "build_config", "load_config", "output_of", "resolve_task"]


def _unet_preset(name: str) -> dict[str, Any]:
    if name not in UNET_PRESETS:
        raise ValueError(f"unknown UNet preset {name!r}; valid names: {sorted(UNET_PRESETS)}")
    return config_to_dict(UNET_PRESETS[name])


@dataclass(frozen=True)
class Task:
    """A training task: its config class, its training function ``train(cfg, *, overwrite,
    resume, dist) -> out_dir`` and how ``model: NAME`` names an architecture preset."""

    config: type
    train: Callable[..., Path]
    model_preset: Callable[[str], dict[str, Any]] | None = None


TASKS: dict[str, Task] = {
    "diffusion": Task(CONFIG_CLASSES["diffusion"], train_diffusion, _unet_preset),
    "autoencoder": Task(CONFIG_CLASSES["autoencoder"], train_autoencoder,
                        lambda name: get_autoencoder_config(name).to_dict()),
    "vqgan": Task(CONFIG_CLASSES["vqgan"], train_vqgan,
                  lambda name: get_vqgan_config(name).to_dict()),
    "transformer": Task(CONFIG_CLASSES["transformer"], train_transformer),
    "finetune": Task(CONFIG_CLASSES["finetune"], train_finetune),
}  # fmt: skip

# keys of the per-task layouts before the one layout (dotted prefixes) -> their new place
_MOVED = {
    "train.steps": "steps", "train.batch_size": "data.batch_size", "train.lr": "optim.lr",
    "train.disc_lr": "optim.disc_lr", "train.betas": "optim.betas",
    "train.weight_decay": "optim.weight_decay", "train.warmup_steps": "optim.warmup_steps",
    "train.grad_clip": "optim.grad_clip", "train.seed": "seed", "train.log_every": "log_every",
    "train.bf16": "precision (bf16 / fp32)", "train.kl_weight": "regularizer.weight",
    "train.loss.codebook_weight": "regularizer.weight", "train.loss": "loss",
    "train.gumbel_temperature": "gumbel_temperature", "train.pkeep": "pkeep",
    "loss.codebook_weight": "regularizer.weight", "gpt": "model",
    "train": "optim.*, data.batch_size, steps, seed or log_every",
}  # fmt: skip


def _leaves(data: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        out += _leaves(value, dotted + ".") if isinstance(value, dict) and value else [dotted]
    return out


def _check_moved(data: dict[str, Any], where: str) -> None:
    """Refuse a key of the older layouts, naming the key that replaced it."""
    for key in _leaves(data):
        if key == "train" and isinstance(data.get("train"), str):  # finetune's train: full|lora
            continue
        old = max((o for o in _MOVED if key == o or key.startswith(o + ".")), key=len, default=None)
        if old is not None:
            new = _MOVED[old]
            if "*" not in new and " " not in new:
                new += key[len(old) :]  # the same sub-key under the new section
            raise ValueError(
                f"{where}{key}: this key moved in the one config layout of every task; use {new}"
            )


def _preset_fields(task: Task, name: Any, key: str) -> dict[str, Any]:
    """The fields of the architecture preset ``name``; errors name the config ``key``."""
    try:
        return task.model_preset(name)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{key}: {exc}") from None


def _resolve_model(data: dict[str, Any], task: Task) -> None:
    """``model: NAME`` / ``model: {preset: NAME, ...}`` -> the preset's fields (+ changes)."""
    model = data.get("model")
    if task.model_preset is None:
        return
    if isinstance(model, str):
        data["model"] = _preset_fields(task, model, "model")
    elif isinstance(model, dict) and "preset" in model:
        rest = {k: v for k, v in model.items() if k != "preset"}
        data["model"] = {**_preset_fields(task, model["preset"], "model.preset"), **rest}


def resolve_task(loaded: dict[str, Any], overrides: list[str], preset: str | None) -> str:
    """The task of a run: a ``task=`` override, else the file's ``task:``, else the preset's,
    else ``diffusion``; pops the ``task`` key / override. A mismatch with the preset is an
    error."""
    task = loaded.pop("task", None)
    for item in [o for o in overrides if o.split("=", 1)[0].strip() == "task"]:
        overrides.remove(item)
        task = parse_value("task", item.split("=", 1)[1])
    implied = task_of(get_preset(preset)) if preset is not None else None
    task = task if task is not None else implied or "diffusion"
    if task not in TASKS:
        raise ValueError(f"task: unknown {task!r}; valid: {', '.join(TASKS)}")
    if implied is not None and task != implied:
        raise ValueError(f"task: {task!r} does not match preset {preset!r} (a {implied} preset)")
    return task


def get_preset(name: str) -> TaskConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown training preset {name!r}; valid names: {sorted(PRESETS)}")
    return PRESETS[name]


def build_config(
    task: str,
    yaml: str | Path | dict[str, Any] | None = None,
    overrides: list[str] | None = None,
    preset: str | TaskConfig | None = None,
    source: str | Path | None = None,
) -> TaskConfig:
    """The ``task`` config: ``preset`` (a name or a config; default the task's defaults), then
    ``yaml`` (a file or a mapping, without or with a matching ``task`` key), then ``key=value``
    overrides (``model=NAME`` names an architecture preset); every key and value checked.
    ``source``: the file a ``yaml`` mapping was read from, named in its errors."""
    if task not in TASKS:
        raise ValueError(f"task: unknown {task!r}; valid: {', '.join(TASKS)}")
    spec = TASKS[task]
    base = get_preset(preset) if isinstance(preset, str) else preset
    if base is not None and not isinstance(base, spec.config):
        raise ValueError(f"task: {task!r} does not match the preset (a {task_of(base)} config)")
    source = yaml if isinstance(yaml, (str, Path)) else source
    where = f"{source}: " if source is not None else ""
    loaded = dict(read_yaml(yaml) if isinstance(yaml, (str, Path)) else (yaml or {}))
    if loaded.pop("task", task) != task:
        raise ValueError(f"{where}task: the file is not a {task!r} config")
    _check_moved(loaded, where)
    _resolve_model(loaded, spec)
    data = merge_dicts(config_to_dict(base if base is not None else spec.config()), loaded)
    for item in overrides or []:
        key, _, raw = item.partition("=")
        _check_moved(apply_overrides({}, [item]), "")
        if key.strip() in ("model", "model.preset") and spec.model_preset is not None:
            value = parse_value(key, raw)
            if isinstance(value, str):  # an architecture preset replaces the whole section
                data["model"] = _preset_fields(spec, value, key.strip())
                continue
        data = apply_overrides(data, [item])
    _resolve_model(data, spec)
    return config_from_dict(spec.config, data)


def load_config(path: str | Path, overrides: list[str] | None = None) -> TaskConfig:
    """A config file with its ``task:`` (``diffusion`` when it has none, as older run files)."""
    loaded = read_yaml(path)
    return build_config(loaded.pop("task", "diffusion"), loaded, overrides, source=path)


def output_of(cfg: TaskConfig) -> tuple[str, tuple[str, ...] | None]:
    """The folder a run writes and the name prefixes it owns there (None: all of it; the
    transformer shares the VQGAN's folder)."""
    if task_of(cfg) == "transformer":
        return cfg.run_dir, TRANSFORMER_OWNED
    if task_of(cfg) == "finetune":  # its cache/ is kept
        return cfg.out_dir, cfg.owned
    return cfg.out_dir, None
