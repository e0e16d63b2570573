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

Every text written here parses back to the same parameters: a prompt that A1111's line-based
format cannot carry (a line starting with ``Negative prompt:``, leading/trailing blanks) is also
stored JSON-quoted as ``Prompt: "..."`` on the last line, which A1111's parser, like ours, lets
override the first lines. Parsing is linear in the text and the text is bounded (64 KiB);
numbers are range-checked (ValueError naming the key).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from genmodels.diffusion.samplers.registry import A1111_ALIASES, resolve_sampler
from genmodels.diffusion.schedules import A1111_SCHEDULER_ALIASES, resolve_scheduler
from genmodels.pipelines.image_reading import open_regular
from genmodels.pipelines.seeds import MAX_SEED

__all__ = [
    "GenerationParameters",
    "file_sha256",
    "format_infotext",
    "format_png_parameters",
    "model_hash",
    "parse_infotext",
    "parameters_from_infotext",
    "read_png_parameters",
]

PNG_KEY = "parameters"
MAX_INFOTEXT = 64 * 1024  # characters; A1111's own texts are a few hundred
# A1111's re_param, r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)', is quadratic in
# findall on a long line without ':' (every start scans to the end); _pairs finds the same
# pairs in one pass with these pieces.
_RUN = re.compile(r"\s*([\w \-/]*)")  # optional blanks, then a run of key characters
_WORD = re.compile(r"\w")
_VALUE = re.compile(r'\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
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
    plain = text == text.strip() and not (set(text) & set(',:\n"')) and "\\" not in text
    return text if plain else json.dumps(text, ensure_ascii=False)


def _pairs(line: str) -> list[tuple[str, str]]:
    """The ``(key, raw value)`` pairs A1111's ``re_param.findall`` finds, in linear time."""
    pairs, pos, n = [], 0, len(line)
    while pos < n:
        run = _RUN.match(line, pos)
        q = run.end()
        if q < n and line[q] == ":":  # a key is the run from its first word character
            word = _WORD.search(line, run.start(1), q)
            if word is not None and q - word.start() >= 2:
                value = _VALUE.match(line, q + 1)
                pairs.append((line[word.start() : q], value.group(1)))  # type: ignore[union-attr]
                pos = value.end()  # type: ignore[union-attr]
                continue
        pos = q if q > pos else pos + 1  # no key starts before the end of this run
    return pairs


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
    text = f"{p.prompt}{negative}\n{line}"
    parsed = parse_infotext(text)
    if (parsed["Prompt"], parsed["Negative prompt"]) != (p.prompt, p.negative_prompt):
        # the lines cannot carry these prompts: store them exactly on the last line too
        exact = {"Prompt": p.prompt, "Negative prompt": p.negative_prompt}
        text += "".join(f", {k}: {json.dumps(v, ensure_ascii=False)}" for k, v in exact.items())
    return text


def parse_infotext(text: str) -> dict[str, str]:
    """A1111 ``parse_generation_parameters``: {"Prompt", "Negative prompt", key: value, ...};
    ``Size: WxH`` also gives ``Size-1`` / ``Size-2``."""
    if len(text) > MAX_INFOTEXT:
        raise ValueError(
            f"parameters text of {len(text)} characters is longer than the {MAX_INFOTEXT} allowed"
        )
    *lines, last = text.strip().split("\n")
    pairs = _pairs(last)
    if len(pairs) < 3:
        lines.append(last)
        last = ""
    prompt, negative, in_negative = [], [], False
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            in_negative, line = True, line[len("Negative prompt:") :].strip()
        (negative if in_negative else prompt).append(line)
    res = {"Prompt": "\n".join(prompt), "Negative prompt": "\n".join(negative)}
    for key, value in pairs if last else []:
        value = _unquote(value.strip())
        m = _SIZE.match(value)
        if m:
            res[f"{key}-1"], res[f"{key}-2"] = m.group(1), m.group(2)
        res[key] = value
    return res


_KNOWN = {"Prompt", "Negative prompt", "Steps", "Sampler", "Schedule type", "CFG scale", "Seed",
          "Size", "Size-1", "Size-2", "Model hash", "Model", "Denoising strength"}  # fmt: skip


def _number(d: dict[str, str], key: str, default: float, kind: type, lo: float, hi: float):
    """``kind(d[key])`` (or ``default``), finite and in [lo, hi]."""
    if key not in d:
        return default
    try:
        value = kind(d[key])
    except (ValueError, OverflowError):
        raise ValueError(f"{key}: {d[key][:40]!r} is not a valid {kind.__name__}") from None
    if not (math.isfinite(value) and lo <= value <= hi):
        raise ValueError(f"{key}: {d[key][:40]} is out of range [{lo}, {hi}]")
    return value


def parameters_from_infotext(text: str) -> GenerationParameters:
    """Parse an infotext into parameters; old-style sampler names ("DPM++ 2M Karras") and the
    "Schedule type" key both resolve to registry names. Numbers are range-checked."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("no generation parameters (the parameters text is empty)")
    d = parse_infotext(text)
    try:
        sampler, implied = resolve_sampler(d.get("Sampler", "Euler"))
        scheduler = resolve_scheduler(d["Schedule type"]) if "Schedule type" in d else implied
        strength = _number(d, "Denoising strength", None, float, 0.0, 1.0)
        return GenerationParameters(
            prompt=d["Prompt"], negative_prompt=d["Negative prompt"],
            steps=_number(d, "Steps", 20, int, 1, 2**31 - 1), sampler=sampler,
            scheduler=scheduler or "normal",
            cfg_scale=_number(d, "CFG scale", 7.0, float, 0.0, math.inf),
            seed=_number(d, "Seed", 0, int, 0, MAX_SEED),
            width=_number(d, "Size-1", 512, int, 1, 2**31 - 1),
            height=_number(d, "Size-2", 512, int, 1, 2**31 - 1),
            denoising_strength=strength,
            model_hash=d.get("Model hash"), model_name=d.get("Model"),
            extra={k: v for k, v in d.items() if k not in _KNOWN},
        )  # fmt: skip
    except (KeyError, ValueError) as exc:
        raise ValueError(f"not a valid A1111 parameters text ({exc}): {text!r:.120}") from None


def read_png_parameters(path: str | os.PathLike) -> str:
    """The ``parameters`` text chunk of a PNG (ValueError when it is missing, empty or too big)."""
    from PIL import Image

    with open_regular(path, "image") as f:
        try:
            with Image.open(f) as im:
                text = im.info.get(PNG_KEY)
        except (OSError, ValueError, SyntaxError) as exc:  # ValueError: PIL's chunk-size limit
            raise ValueError(f"{path}: cannot read image ({exc})") from None
    if not isinstance(text, str):
        raise ValueError(f"{path}: no {PNG_KEY!r} text chunk (not generated by genmodels/A1111?)")
    if not text.strip():
        raise ValueError(f"{path}: no generation parameters (the {PNG_KEY!r} chunk is empty)")
    if len(text) > MAX_INFOTEXT:
        raise ValueError(
            f"{path}: the {PNG_KEY!r} chunk has {len(text)} characters, more than the "
            f"{MAX_INFOTEXT} allowed"
        )
    return text


def format_png_parameters(path: str | os.PathLike) -> str:
    """Human-readable generation parameters of a PNG, for ``genmodels info IMAGE.png``."""
    d = parse_infotext(read_png_parameters(path))
    width = max(len(k) for k in d)
    skip = {"Size-1", "Size-2"}
    return "\n".join(f"{k:<{width}}  {v}" for k, v in d.items() if k not in skip)


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file, as hex digits."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_hash(path: str | os.PathLike) -> str | None:
    """A1111's short model hash (first 10 hex digits of the file's sha256); None for a folder."""
    path = Path(path)
    if not path.is_file():
        return None
    return file_sha256(path)[:10]
