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

from genmodels.diffusion.samplers.registry import SAMPLER_INFO, resolve_sampler
from genmodels.diffusion.schedules import A1111_SCHEDULER_ALIASES, resolve_scheduler
from genmodels.pipelines.hires import UPSCALERS, HiresFix
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
_SAMPLER_NAMES = {k: v.a1111 for k, v in SAMPLER_INFO.items() if v.a1111 is not None}
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
    vae_hash: str | None = None  # A1111 "VAE hash" / "VAE" of a separate --vae file
    vae_name: str | None = None
    clip_skip: int = 1  # A1111 numbering: 1 = last layer
    guidance_rescale: float = 0.0  # "CFG Rescale phi" (Lin et al. 2023)
    variation_seed: int | None = None  # A1111 "Variation seed" (subseed)
    variation_strength: float = 0.0  # A1111 "Variation seed strength"
    hires: HiresFix | None = None  # txt2img second pass; its strength is "Denoising strength"
    refiner_name: str | None = None  # A1111 "Refiner: NAME [HASH]"
    refiner_hash: str | None = None
    refiner_switch_at: float | None = None
    sdxl_original_size: tuple[int, int] | None = None  # (width, height); None: the image size
    sdxl_crop: tuple[int, int] | None = None  # (top, left) as sgm / diffusers; None: (0, 0)
    sdxl_target_size: tuple[int, int] | None = None  # (width, height); None: the image size
    aesthetic_score: float | None = None  # refiner; None: 6.0 (sgm / diffusers default)
    negative_aesthetic_score: float | None = None  # refiner; None: 2.5
    prediction: str | None = None  # "eps" / "v" when overriding the checkpoint's
    eta: float | None = None  # the sampler's eta (A1111 "Eta" / "Eta DDIM"); None: its default
    cfg_cutoff: float = 0.0  # A1111 "NGMS": no unconditional pass below this sigma (0: off)
    cache_interval: int = 1  # DeepCache: a full UNet evaluation every N-th (1: off)
    cache_depth: int = 1  # DeepCache: UNet input blocks recomputed on the cached evaluations
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


def _size(v: tuple[int, int] | None) -> str | None:
    return None if v is None else f"{v[0]}x{v[1]}"


def _fields(p: GenerationParameters) -> dict[str, object]:
    """Infotext keys in A1111's order; None values are left out."""
    hr = p.hires
    refiner = None
    if p.refiner_name is not None:
        refiner = p.refiner_name + (f" [{p.refiner_hash}]" if p.refiner_hash else "")
    strength = hr.denoising_strength if hr is not None else p.denoising_strength
    return {
        "Steps": p.steps,
        "Sampler": _SAMPLER_NAMES.get(p.sampler, p.sampler),
        "Schedule type": _SCHEDULER_NAMES.get(p.scheduler, p.scheduler),
        "CFG scale": float(p.cfg_scale),
        "Seed": p.seed,
        "Size": f"{p.width}x{p.height}",
        "Model hash": p.model_hash,
        "Model": p.model_name,
        "VAE hash": p.vae_hash,
        "VAE": p.vae_name,
        "Variation seed": p.variation_seed if p.variation_strength else None,
        "Variation seed strength": p.variation_strength or None,
        "Denoising strength": strength,
        "Eta DDIM" if p.sampler.startswith("ddim") else "Eta": p.eta,
        "Clip skip": p.clip_skip if p.clip_skip > 1 else None,
        "CFG Rescale phi": p.guidance_rescale or None,
        "Hires upscale": None if hr is None or hr.resize is not None else hr.scale,
        "Hires resize": None if hr is None else _size(hr.resize),
        "Hires steps": None if hr is None or not hr.steps else hr.steps,
        "Hires upscaler": None if hr is None else hr.upscaler,
        "Hires sampler": None if hr is None or hr.sampler is None else _sampler_name(hr.sampler),
        "Hires schedule type": None if hr is None or hr.scheduler is None
        else _SCHEDULER_NAMES.get(hr.scheduler, hr.scheduler),
        "Hires prompt": None if hr is None else hr.prompt,
        "Hires negative prompt": None if hr is None else hr.negative_prompt,
        "Refiner": refiner,
        "Refiner switch at": p.refiner_switch_at if refiner is not None else None,
        "SDXL original size": _size(p.sdxl_original_size),
        "SDXL crop top left": _size(p.sdxl_crop),
        "SDXL target size": _size(p.sdxl_target_size),
        "Aesthetic score": p.aesthetic_score,
        "Negative aesthetic score": p.negative_aesthetic_score,
        "Prediction": p.prediction,
        "NGMS": p.cfg_cutoff or None,
        "Cache interval": p.cache_interval if p.cache_interval > 1 else None,
        "Cache depth": p.cache_depth if p.cache_interval > 1 else None,
        **p.extra,
    }  # fmt: skip


def _sampler_name(name: str) -> str:
    return _SAMPLER_NAMES.get(name, name)


def format_infotext(p: GenerationParameters) -> str:
    """The A1111 ``parameters`` text of ``p``."""
    fields = _fields(p)
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
          "Size", "Size-1", "Size-2", "Model hash", "Model", "Denoising strength", "VAE hash",
          "VAE", "Variation seed", "Variation seed strength", "Clip skip", "CFG Rescale phi",
          "Hires upscale", "Hires steps", "Hires upscaler", "Hires sampler", "Hires resize",
          "Hires resize-1", "Hires resize-2", "Hires prompt", "Hires negative prompt",
          "Hires schedule type", "Refiner", "Refiner switch at", "Prediction",
          "Aesthetic score", "Negative aesthetic score", "RNG", "Eta", "Eta DDIM", "NGMS",
          "Cache interval", "Cache depth"}  # fmt: skip
_SIZE_KEYS = {"SDXL original size": "sdxl_original_size", "SDXL crop top left": "sdxl_crop",
              "SDXL target size": "sdxl_target_size"}  # fmt: skip
_KNOWN |= {f"{k}{suffix}" for k in _SIZE_KEYS for suffix in ("", "-1", "-2")}
_REFINER = re.compile(r"^(.*?)(?: \[([0-9a-fA-F]+)\])?$", re.S)


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


def _pair(d: dict[str, str], key: str) -> tuple[int, int] | None:
    if key not in d:
        return None
    if f"{key}-1" not in d:
        raise ValueError(f"{key}: {d[key][:40]!r} is not WIDTHxHEIGHT")
    return (_number(d, f"{key}-1", 0, int, 0, 2**31 - 1),
            _number(d, f"{key}-2", 0, int, 0, 2**31 - 1))  # fmt: skip


def _hires(d: dict[str, str]) -> HiresFix | None:
    if "Hires upscale" not in d and "Hires upscaler" not in d and "Hires resize" not in d:
        return None
    sampler = scheduler = None
    upscaler = d.get("Hires upscaler", "Latent")
    if upscaler not in UPSCALERS:  # e.g. an ESRGAN model: the closest we have is a pixel resize
        upscaler = "Lanczos"
    if "Hires sampler" in d:
        sampler, scheduler = resolve_sampler(d["Hires sampler"])
    if "Hires schedule type" in d:
        scheduler = resolve_scheduler(d["Hires schedule type"])
    return HiresFix(
        scale=_number(d, "Hires upscale", 2.0, float, 1e-3, 64.0),
        resize=_pair(d, "Hires resize"),
        prompt=d.get("Hires prompt"), negative_prompt=d.get("Hires negative prompt"),
        upscaler=upscaler,
        steps=_number(d, "Hires steps", 0, int, 0, 2**31 - 1),
        denoising_strength=_number(d, "Denoising strength", 0.7, float, 1e-6, 1.0),
        sampler=sampler, scheduler=scheduler,
    )  # fmt: skip


def _substituted(key: str, d: dict[str, str]) -> bool:
    """A known key whose value we cannot honour (kept in ``extra`` so that it is reported):
    an upscaler we do not have, or an A1111 RNG other than its "CPU" one (ours: per-image CPU
    generators)."""
    if key == "RNG":
        return d[key] != "CPU"
    return key == "Hires upscaler" and d[key] not in UPSCALERS


def _refiner(d: dict[str, str]) -> tuple[str | None, str | None, float | None]:
    if "Refiner" not in d:
        return None, None, None
    m = _REFINER.match(d["Refiner"])
    switch = _number(d, "Refiner switch at", 0.8, float, 0.0, 1.0)
    return m.group(1), m.group(2), switch  # type: ignore[union-attr]


def parameters_from_infotext(text: str) -> GenerationParameters:
    """Parse an infotext into parameters; old-style sampler names ("DPM++ 2M Karras") and the
    "Schedule type" key both resolve to registry names. Numbers are range-checked."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("no generation parameters (the parameters text is empty)")
    d = parse_infotext(text)
    try:
        sampler, implied = resolve_sampler(d.get("Sampler", "Euler"))
        scheduler = implied
        if d.get("Schedule type", "Automatic").strip().lower() != "automatic":
            scheduler = resolve_scheduler(d["Schedule type"])  # "Automatic": the sampler's own
        hires = _hires(d)
        strength = None if hires else _number(d, "Denoising strength", None, float, 0.0, 1.0)
        refiner, refiner_hash, switch = _refiner(d)
        prediction = d.get("Prediction")
        if prediction not in (None, "eps", "v"):
            raise ValueError(f"Prediction: {prediction[:20]!r} is not eps or v")
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
            vae_hash=d.get("VAE hash"), vae_name=d.get("VAE"),
            clip_skip=_number(d, "Clip skip", 1, int, 1, 64),
            guidance_rescale=_number(d, "CFG Rescale phi", 0.0, float, 0.0, 1.0),
            variation_seed=_number(d, "Variation seed", None, int, 0, MAX_SEED),
            variation_strength=_number(d, "Variation seed strength", 0.0, float, 0.0, 1.0),
            hires=hires, refiner_name=refiner, refiner_hash=refiner_hash,
            refiner_switch_at=switch,
            sdxl_original_size=_pair(d, "SDXL original size"),
            sdxl_crop=_pair(d, "SDXL crop top left"),
            sdxl_target_size=_pair(d, "SDXL target size"),
            aesthetic_score=_number(d, "Aesthetic score", None, float, -1e6, 1e6),
            negative_aesthetic_score=_number(d, "Negative aesthetic score", None, float, -1e6,
                                             1e6),
            prediction=prediction,
            eta=_number(d, "Eta DDIM" if "Eta DDIM" in d else "Eta", None, float, 0.0, 1e3),
            cfg_cutoff=_number(d, "NGMS", 0.0, float, 0.0, 1e6),
            cache_interval=_number(d, "Cache interval", 1, int, 1, 1000),
            cache_depth=_number(d, "Cache depth", 1, int, 1, 1000),
            extra={k: v for k, v in d.items() if k not in _KNOWN or _substituted(k, d)},
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
