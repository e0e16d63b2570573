"""The txt2img / img2img / inpaint flags beyond the basic ones, and what ``--from-png`` gives them.

Each setting comes from the command line, else from the PNG given with ``--from-png``, else its
default. Fields of the PNG that cannot be honoured (another program's extensions, a refiner or
VAE named in the PNG but not given as a file, an upscaler we do not have) are named in a warning.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

from genmodels.pipelines.extra_networks import parse_lora_tags
from genmodels.pipelines.hires import UPSCALERS, HiresFix
from genmodels.pipelines.metadata import GenerationParameters

__all__ = [
    "add_arguments", "check_same_loras", "generation_options", "ignored_fields",
    "read_prompt_file",
]  # fmt: skip

_WH = re.compile(r"^(\d+)[x,](\d+)$")


def _pair(text: str) -> tuple[int, int]:
    m = _WH.match(text.strip())
    if m is None:
        raise argparse.ArgumentTypeError(f"expected two integers as AxB, got {text!r}")
    return int(m.group(1)), int(m.group(2))


def add_arguments(p: argparse.ArgumentParser, mode: str) -> None:
    p.add_argument(
        "--clip-skip",
        type=int,
        metavar="N",
        help="A1111 clip skip: 1 = last CLIP layer, 2 = penultimate (SD 1.x)",
    )
    p.add_argument(
        "--guidance-rescale",
        type=float,
        metavar="PHI",
        help="guidance rescale phi in [0, 1] (Lin et al. 2023; 0.7 for v-models)",
    )
    p.add_argument(
        "--prediction",
        choices=("eps", "v"),
        help="override the checkpoint's detected prediction type",
    )
    p.add_argument(
        "--eta",
        type=float,
        help="noise of ancestral / SDE / DDIM samplers (A1111 Eta; default 1, DDIM 0)",
    )
    p.add_argument("--variation-seed", type=int, help="A1111 variation seed")
    p.add_argument(
        "--variation-strength",
        type=float,
        help="how far to move towards the variation seed's noise, in [0, 1]",
    )
    p.add_argument(
        "--from-file",
        type=Path,
        metavar="FILE",
        help="one prompt per line; each line is a run of --n-iter x --batch-size",
    )
    sdxl = p.add_argument_group("SDXL size conditioning")
    sdxl.add_argument(
        "--original-size",
        type=_pair,
        metavar="WxH",
        help="SDXL original_size (default: the image size)",
    )
    sdxl.add_argument(
        "--crop-top-left",
        type=_pair,
        metavar="TOPxLEFT",
        help="SDXL crop_coords_top_left (default 0x0)",
    )
    sdxl.add_argument(
        "--target-size",
        type=_pair,
        metavar="WxH",
        help="SDXL target_size (default: the image size)",
    )
    sdxl.add_argument("--aesthetic-score", type=float, help="SDXL refiner score (default 6.0)")
    sdxl.add_argument(
        "--negative-aesthetic-score",
        type=float,
        help="SDXL refiner score of the negative prompt (default 2.5)",
    )
    if mode != "inpaint":
        p.add_argument(
            "--refiner", type=Path, help="SDXL refiner checkpoint: takes over the latents"
        )
        p.add_argument(
            "--refiner-switch-at",
            type=float,
            metavar="FRACTION",
            help="fraction of the schedule before the refiner takes over (default 0.8)",
        )
    if mode == "txt2img":
        hr = p.add_argument_group("hires fix (A1111): a second img2img pass at a larger size")
        hr.add_argument("--hires", action="store_true", help="enable the hires fix")
        hr.add_argument("--hires-scale", type=float, help="upscale factor (default 2)")
        hr.add_argument(
            "--hires-resize",
            type=_pair,
            metavar="WxH",
            help="upscale to this size instead (0 keeps the aspect ratio; both: "
            "cover, then crop the centre, as A1111)",
        )
        hr.add_argument(
            "--hires-upscaler",
            choices=UPSCALERS,
            help="latent interpolation or pixel resize (default Latent)",
        )
        hr.add_argument("--hires-steps", type=int, help="second-pass steps (default 0: --steps)")
        hr.add_argument(
            "--hires-strength", type=float, help="second-pass denoising strength (default 0.7)"
        )
        hr.add_argument("--hires-sampler", help="second-pass sampler (default: --sampler)")
        hr.add_argument("--hires-scheduler", help="second-pass schedule (default: --scheduler)")
        hr.add_argument("--hires-prompt", help="second-pass prompt (default: --prompt)")
        hr.add_argument(
            "--hires-negative-prompt",
            help="second-pass negative prompt (default: --negative-prompt)",
        )
    # fmt: skip


def _pick(cli: Any, stored: Any, default: Any) -> Any:
    return cli if cli is not None else stored if stored is not None else default


def _hires(args: argparse.Namespace, stored: GenerationParameters | None) -> HiresFix | None:
    if getattr(args, "hires", None) is None:  # img2img / inpaint
        return None
    given = [args.hires_scale, args.hires_resize, args.hires_upscaler, args.hires_steps,
             args.hires_strength, args.hires_sampler, args.hires_scheduler, args.hires_prompt,
             args.hires_negative_prompt]  # fmt: skip
    base = stored.hires if stored is not None else None
    if not args.hires and all(v is None for v in given) and base is None:
        return None
    base = base or HiresFix()
    return HiresFix(
        scale=_pick(args.hires_scale, None, base.scale),
        resize=None
        if args.hires_scale is not None
        else _pick(args.hires_resize, None, base.resize),
        upscaler=_pick(args.hires_upscaler, None, base.upscaler),
        steps=_pick(args.hires_steps, None, base.steps),
        denoising_strength=_pick(args.hires_strength, None, base.denoising_strength),
        sampler=_pick(args.hires_sampler, None, base.sampler),
        scheduler=_pick(args.hires_scheduler, None, base.scheduler),
        prompt=_pick(args.hires_prompt, None, base.prompt),
        negative_prompt=_pick(args.hires_negative_prompt, None, base.negative_prompt),
    )


def generation_options(
    args: argparse.Namespace, stored: GenerationParameters | None
) -> dict[str, Any]:
    """Keyword arguments for ``generate.txt2img`` / ``img2img`` / ``inpaint`` (without the
    refiner pipeline and the SDXL sizes, which need the loaded model: see ``sdxl_fields``)."""
    s = stored
    opts = dict(
        clip_skip=_pick(args.clip_skip, s and s.clip_skip, 1),
        guidance_rescale=_pick(args.guidance_rescale, s and s.guidance_rescale, 0.0),
        variation_seed=_pick(args.variation_seed, s and s.variation_seed, None),
        variation_strength=_pick(args.variation_strength, s and s.variation_strength, 0.0),
        eta=_pick(args.eta, s and s.eta, None),
        cfg_cutoff=_pick(args.cfg_cutoff, s and s.cfg_cutoff, 0.0),
        cache_interval=_pick(args.cache_interval, s and s.cache_interval, 1),
        cache_depth=_pick(args.cache_depth, s and s.cache_depth, 1),
    )
    hires = _hires(args, s)
    if hires is not None:
        opts["hires"] = hires
    return opts


def sdxl_fields(args: argparse.Namespace, stored: GenerationParameters | None) -> dict[str, Any]:
    """The SDXL size settings (``GenerationParameters`` names) that are set."""
    s = stored
    fields = dict(
        sdxl_original_size=_pick(args.original_size, s and s.sdxl_original_size, None),
        sdxl_crop=_pick(args.crop_top_left, s and s.sdxl_crop, None),
        sdxl_target_size=_pick(args.target_size, s and s.sdxl_target_size, None),
        aesthetic_score=_pick(args.aesthetic_score, s and s.aesthetic_score, None),
        negative_aesthetic_score=_pick(args.negative_aesthetic_score,
                                       s and s.negative_aesthetic_score, None),
    )  # fmt: skip
    return {k: v for k, v in fields.items() if v is not None}


# read by the adapter and ControlNet options (cli/adapter_args.py, cli/controlnet_args.py)
_ADAPTER_FIELDS = {"Lora hashes", "TI hashes"}


def _read_elsewhere(key: str) -> bool:
    return key in _ADAPTER_FIELDS or re.fullmatch(r"ControlNet \d+", key) is not None


def ignored_fields(args: argparse.Namespace, stored: GenerationParameters) -> list[str]:
    """``key: value`` of each field of a ``--from-png`` PNG that this run does not honour."""
    out = [f"{k}: {v}" for k, v in stored.extra.items() if not _read_elsewhere(k)]
    if stored.refiner_name is not None and getattr(args, "refiner", None) is None:
        out.append(f"Refiner: {stored.refiner_name} (give it with --refiner PATH)")
    if stored.hires is not None and getattr(args, "hires", None) is None:
        out.append(f"Hires upscale: {stored.hires.scale} (the hires fix is txt2img's)")
    if stored.vae_name is not None and args.vae is None:
        out.append(f"VAE: {stored.vae_name} (give it with --vae PATH)")
    return out


def warn_ignored(args: argparse.Namespace, stored: GenerationParameters) -> None:
    for field in ignored_fields(args, stored):
        print(f"warning: --from-png {args.from_png}: ignoring {field}", file=sys.stderr)


def check_same_loras(prompts: list[str]) -> None:
    """LoRAs are applied to the weights once per run: every ``--from-file`` line must name the
    same ``<lora:...>`` tags."""
    tags = {tuple(parse_lora_tags(p)) for p in prompts}
    if len(tags) > 1:
        raise ValueError(
            "--from-file: the lines name different <lora:...> tags; LoRAs are applied once per "
            "run, so put lines with other LoRAs in another file"
        )


def read_prompt_file(path: Path) -> list[str]:
    """The non-empty lines of a prompt file (A1111's "prompts from file": one per line)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"--from-file {path}: cannot read it ({exc})") from None
    prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"--from-file {path}: no prompts (every line is empty)")
    return prompts
