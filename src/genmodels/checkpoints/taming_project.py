"""The facts genmodels reads from a taming ``configs/*-project.yaml`` (never its ``target:``
classes, which are only compared as strings).

taming's ``main.py`` writes the merged config of a run to ``<logdir>/configs/<time>-project.yaml``
next to ``<logdir>/checkpoints/last.ckpt``. The weights lack what this gives: the GPT's
``n_head``, the ``sos_token``, and which weightless cond stage a ``Net2NetTransformer`` used:

* ``cond_stage_config: __is_unconditional__`` (or ``unconditional: true``, or an
  ``SOSProvider``): one SOS token ``sos_token`` (default 0) before the codes -> "sos";
* a ``Labelator`` (``n_classes``): the class label itself as the token -> "class";
* ``__is_first_stage__``: the codes of a conditioning image from the first stage;
* a ``CoordStage``: quantised pixel coordinates -> "coord"; any other target: its VQGAN.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["TamingProject", "taming_project_from_dict", "find_project_configs", "merge_configs"]


@dataclass(frozen=True)
class TamingProject:
    """``cond``: "sos", "class", "first_stage", "coord" or "vqgan" (see the module docstring)."""

    cond: str = "sos"
    sos_token: int = 0
    n_classes: int | None = None
    n_head: int | None = None
    resolution: int | None = None  # the first stage's ddconfig.resolution
    unknown_index: str | int | None = None  # the first stage's remap fallback
    cond_target: str | None = None


def _mapping(d: Any, name: str, source: str) -> Mapping[str, Any]:
    if d is None:
        return {}
    if not isinstance(d, Mapping):
        raise ValueError(f"{source}: {name} should be a mapping, got {type(d).__name__}")
    return d


def _int(value: Any, name: str, source: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{source}: {name} should be an integer, got {value!r}")
    return value


def _cond(params: Mapping[str, Any], source: str) -> tuple[str, str | None, Mapping[str, Any]]:
    cfg = params.get("cond_stage_config")
    if params.get("unconditional") is True or cfg == "__is_unconditional__":
        return "sos", None, {}
    if cfg == "__is_first_stage__":
        return "first_stage", None, {}
    cfg = _mapping(cfg, "model.params.cond_stage_config", source)
    target = str(cfg.get("target", ""))
    name = target.rsplit(".", 1)[-1]
    kinds = {"SOSProvider": "sos", "Labelator": "class", "CoordStage": "coord"}
    if not target:
        return "sos", None, {}  # a bare VQGAN project (no cond stage)
    return kinds.get(name, "vqgan"), target, _mapping(cfg.get("params"), "cond params", source)


def taming_project_from_dict(config: Mapping[str, Any], source: str = "config") -> TamingProject:
    """Parse a loaded project YAML (a VQGAN or a Net2NetTransformer run)."""
    model = _mapping(config.get("model"), "model", source)
    params = _mapping(model.get("params"), "model.params", source)
    gpt = _mapping(_mapping(params.get("transformer_config"), "transformer_config", source)
                   .get("params"), "transformer_config.params", source)  # fmt: skip
    first = params
    if "first_stage_config" in params:
        first_cfg = _mapping(params["first_stage_config"], "first_stage_config", source)
        first = _mapping(first_cfg.get("params"), "first_stage_config.params", source)
    ddconfig = _mapping(first.get("ddconfig"), "ddconfig", source)
    cond, target, cond_params = _cond(params, source)
    sos = _int(params.get("sos_token"), "model.params.sos_token", source)
    if cond_params.get("sos_token") is not None:
        sos = _int(cond_params["sos_token"], "cond_stage_config.params.sos_token", source)
    unknown = first.get("unknown_index")
    if unknown is not None and not isinstance(unknown, str | int):
        raise ValueError(f"{source}: unknown_index should be a string or int, got {unknown!r}")
    return TamingProject(
        cond=cond,
        sos_token=0 if sos is None else sos,
        n_classes=_int(cond_params.get("n_classes"), "Labelator n_classes", source),
        n_head=_int(gpt.get("n_head"), "transformer_config.params.n_head", source),
        resolution=_int(ddconfig.get("resolution"), "ddconfig.resolution", source),
        unknown_index=unknown,
        cond_target=target,
    )


def find_project_configs(ckpt: str | Path) -> list[Path]:
    """``<logdir>/configs/*-project.yaml`` for ``<logdir>/checkpoints/<name>.ckpt``, sorted."""
    logdir = Path(ckpt).resolve().parent.parent
    return sorted((logdir / "configs").glob("*-project.yaml"))


def merge_configs(configs: list[Mapping[str, Any]]) -> dict[str, Any]:
    """Later mappings override earlier ones key by key, recursively (as OmegaConf.merge)."""
    out: dict[str, Any] = {}
    for config in configs:
        for key, value in config.items():
            if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
                out[key] = merge_configs([out[key], value])
            else:
                out[key] = value
    return out
