"""Generation parameters and their A1111-compatible ``parameters`` PNG text chunk.

The text is stable-diffusion-webui's "infotext"::

    a photo of a cat
    Negative prompt: blurry
    Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.0, Seed: 42, Size: 512x512,
    Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Denoising strength: 0.75

(the last line is one line). Values holding ``,``, ``:`` or a newline are JSON-quoted, as A1111's
``quote``; the parser follows A1111's ``parse_generation_parameters`` (the last line holds the
``key: value`` pairs when it has at least three of them). The model hash is A1111's short
"AutoV2" hash: the first 10 hex digits of the sha256 of the checkpoint file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from genmodels.diffusion.samplers.registry import A1111_ALIASES, resolve_sampler
from genmodels.diffusion.schedules import A1111_SCHEDULER_ALIASES, resolve_scheduler

__all__ = [
    "GenerationParameters",
    "format_infotext",
    "format_png_parameters",
    "model_hash",
    "parse_infotext",
    "parameters_from_infotext",
    "read_png_parameters",
]

PNG_KEY = "parameters"
_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_SIZE = re.compile(r"^(\d+)x(\d+)$")
_SAMPLER_NAMES = {v[0]: k for k, v in A1111_ALIASES.items() if v[1] is None}
_SCHEDULER_NAMES = {"karras": "Karras", "exponential": "Exponential", "normal": "Automatic"}
_SCHEDULER_NAMES |= {v: k for k, v in A1111_SCHEDULER_ALIASES.items() if v not in _SCHEDULER_NAMES}


@dataclass
class GenerationParameters:
    """Everything needed to reproduce one image (``seed`` is that image's own seed)."""

    prompt: str
    negative_prompt: str = ""
    steps: int = 20
    sampler: str = "euler"  # registry name
    scheduler: str = "normal"  # registry name
    cfg_scale: float = 7.0
    seed: int = 0
    width: int = 512
    height: int = 512
    denoising_strength: float | None = None  # img2img / inpaint only
    model_hash: str | None = None
    model_name: str | None = None
    extra: dict[str, str] = field(default_factory=dict)  # other infotext keys, kept verbatim


def _quote(text: str) -> str:
    if "," not in text and "\n" not in text and ":" not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


def _unquote(text: str) -> str:
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def format_infotext(p: GenerationParameters) -> str:
    """The A1111 ``parameters`` text of ``p``."""
    fields: dict[str, object] = {
        "Steps": p.steps,
        "Sampler": _SAMPLER_NAMES.get(p.sampler, p.sampler),
        "Schedule type": _SCHEDULER_NAMES.get(p.scheduler, p.scheduler),
        "CFG scale": float(p.cfg_scale),
        "Seed": p.seed,
        "Size": f"{p.width}x{p.height}",
        "Model hash": p.model_hash,
        "Model": p.model_name,
        "Denoising strength": p.denoising_strength,
        **p.extra,
    }
    line = ", ".join(f"{k}: {_quote(str(v))}" for k, v in fields.items() if v is not None)
    negative = f"\nNegative prompt: {p.negative_prompt}" if p.negative_prompt else ""
    return f"{p.prompt}{negative}\n{line}"


def parse_infotext(text: str) -> dict[str, str]:
    """A1111 ``parse_generation_parameters``: {"Prompt", "Negative prompt", key: value, ...};
    ``Size: WxH`` also gives ``Size-1`` / ``Size-2``."""
    *lines, last = text.strip().split("\n")
    if len(_PARAM.findall(last)) < 3:
        lines.append(last)
        last = ""
    prompt, negative, in_negative = [], [], False
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            in_negative, line = True, line[len("Negative prompt:") :].strip()
        (negative if in_negative else prompt).append(line)
    res = {"Prompt": "\n".join(prompt), "Negative prompt": "\n".join(negative)}
    for key, value in _PARAM.findall(last):
        value = _unquote(value.strip())
        m = _SIZE.match(value)
        if m:
            res[f"{key}-1"], res[f"{key}-2"] = m.group(1), m.group(2)
        res[key] = value
    return res


_KNOWN = {"Prompt", "Negative prompt", "Steps", "Sampler", "Schedule type", "CFG scale", "Seed",
          "Size", "Size-1", "Size-2", "Model hash", "Model", "Denoising strength"}  # fmt: skip


def parameters_from_infotext(text: str) -> GenerationParameters:
    """Parse an infotext into parameters; old-style sampler names ("DPM++ 2M Karras") and the
    "Schedule type" key both resolve to registry names."""
    d = parse_infotext(text)
    try:
        sampler, implied = resolve_sampler(d.get("Sampler", "Euler"))
        scheduler = resolve_scheduler(d["Schedule type"]) if "Schedule type" in d else implied
        strength = d.get("Denoising strength")
        return GenerationParameters(
            prompt=d["Prompt"], negative_prompt=d["Negative prompt"],
            steps=int(d.get("Steps", 20)), sampler=sampler, scheduler=scheduler or "normal",
            cfg_scale=float(d.get("CFG scale", 7.0)), seed=int(d.get("Seed", 0)),
            width=int(d.get("Size-1", 512)), height=int(d.get("Size-2", 512)),
            denoising_strength=None if strength is None else float(strength),
            model_hash=d.get("Model hash"), model_name=d.get("Model"),
            extra={k: v for k, v in d.items() if k not in _KNOWN},
        )  # fmt: skip
    except (KeyError, ValueError) as exc:
        raise ValueError(f"not a valid A1111 parameters text ({exc}): {text!r:.120}") from None


def read_png_parameters(path: str | os.PathLike) -> str:
    """The ``parameters`` text chunk of a PNG (ValueError when it is missing)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            text = im.info.get(PNG_KEY)
    except OSError as exc:
        raise ValueError(f"{path}: cannot read image ({exc})") from None
    if not isinstance(text, str):
        raise ValueError(f"{path}: no {PNG_KEY!r} text chunk (not generated by genmodels/A1111?)")
    return text


def format_png_parameters(path: str | os.PathLike) -> str:
    """Human-readable generation parameters of a PNG, for ``genmodels info IMAGE.png``."""
    d = parse_infotext(read_png_parameters(path))
    width = max(len(k) for k in d)
    skip = {"Size-1", "Size-2"}
    return "\n".join(f"{k:<{width}}  {v}" for k, v in d.items() if k not in skip)


def model_hash(path: str | os.PathLike) -> str | None:
    """A1111's short model hash (first 10 hex digits of the file's sha256); None for a folder."""
    path = Path(path)
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:10]
