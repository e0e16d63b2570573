"""``genmodels txt2img | img2img | inpaint``: images from a checkpoint and a prompt.

    genmodels txt2img --ckpt model.safetensors --prompt "a cat" --steps 20 --seed 1 --n-iter 2
    genmodels img2img --ckpt model.safetensors --prompt "a cat" --init-image in.png --strength 0.6
    genmodels inpaint --ckpt model.safetensors --prompt "a cat" --init-image in.png --mask m.png
    genmodels txt2img --ckpt model.safetensors --from-png outputs/00000-1.png   # re-run it
    genmodels txt2img --ckpt model.safetensors --prompt "a house" \
        --controlnet control_v11p_sd15_canny.pth --control-image edges.png --control-weight 0.8

Files are ``<outdir>/<index>-<seed>.png`` with the A1111 ``parameters`` text chunk, the index
one more than the highest in the folder (grids ``grid-<index>.png`` count too), reserved
atomically so that no run overwrites another's files. Every input is checked before the model
is loaded (sizes, steps and estimated memory against limits that ``--no-limits`` lifts; the
device, dtype and output folder). Each image is written (atomically) as soon as its batch is
done; Ctrl-C keeps those, says how many were written and exits with status 130.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch

from genmodels.cli import generation_flags as flags
from genmodels.cli.acceleration import add_acceleration_arguments, check_acceleration
from genmodels.cli.adapter_args import add_adapter_arguments, apply_adapters, plan_adapters
from genmodels.cli.controlnet_args import add_control_arguments, control_specs, load_units
from genmodels.diffusion.samplers.registry import resolve_sampler
from genmodels.diffusion.schedules import resolve_scheduler
from genmodels.models.tiling import TilingConfig
from genmodels.pipelines.devices import cpu_supports_bf16, resolve_device, resolve_dtype
from genmodels.pipelines.image_reading import load_image
from genmodels.pipelines.images import image_grid
from genmodels.pipelines.limits import (
    NO_LIMITS,
    GenerationLimits,
    ModelSize,
    check_generation,
    check_pixels,
)
from genmodels.pipelines.metadata import (
    format_infotext,
    model_hash,
    parameters_from_infotext,
    read_png_parameters,
)
from genmodels.pipelines.outputs import check_outdir, grid_name, image_name, write_output
from genmodels.pipelines.seeds import check_seed

__all__ = ["cpu_supports_bf16", "main", "register", "resolve_dtype", "run"]

MODES = ("txt2img", "img2img", "inpaint")
INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C
SIZE_RULE = "any multiple of 8 (the VAE factor of SD 1.x/2.x/XL)"
# generation options that --from-png fills in when they are not given on the command line
DEFAULTS = dict(prompt=None, negative_prompt="", steps=20, cfg=7.0, sampler="euler",
                scheduler=None, seed=-1, width=512, height=512, strength=None)  # fmt: skip
_FROM_PNG = {"prompt": "prompt", "negative_prompt": "negative_prompt", "steps": "steps",
             "cfg": "cfg_scale", "sampler": "sampler", "scheduler": "scheduler", "seed": "seed",
             "width": "width", "height": "height", "strength": "denoising_strength"}  # fmt: skip


def register(sub: argparse._SubParsersAction) -> None:
    helps = {
        "txt2img": "generate images from a text prompt",
        "img2img": "re-generate an init image guided by a prompt",
        "inpaint": "repaint the white region of a mask",
    }
    for mode in MODES:
        parser = sub.add_parser(mode, help=helps[mode], description=helps[mode] + ".")
        _add_arguments(parser, mode)
        parser.set_defaults(func=run, mode=mode)


def _add_arguments(p: argparse.ArgumentParser, mode: str) -> None:
    p.add_argument("--ckpt", type=Path, required=True, help="checkpoint file or diffusers folder")
    p.add_argument("--vae", type=Path, help="separate VAE file or folder")
    p.add_argument("--prompt", help="the prompt: A1111 emphasis, BREAK, [from:to:when] editing, "
                   "[a|b] alternation")  # fmt: skip
    p.add_argument("--negative-prompt", help="negative prompt (default: empty)")
    p.add_argument("--steps", type=int, help="sampling steps (default 20)")
    p.add_argument("--cfg", type=float, help="classifier-free guidance scale (default 7)")
    p.add_argument("--sampler", help="sampler name or A1111 name (default euler)")
    p.add_argument("--scheduler", help="sigma schedule (default: the sampler's, else normal)")
    p.add_argument("--seed", type=int, help="seed of the first image (default -1: random)")
    p.add_argument("--width", type=int, help=f"width in pixels: {SIZE_RULE}; default 512")
    p.add_argument("--height", type=int, help=f"height in pixels: {SIZE_RULE}; default 512")
    p.add_argument("--batch-size", type=int, default=1, help="images per sampling run")
    p.add_argument("--n-iter", type=int, default=1, help="number of sampling runs")
    p.add_argument("--outdir", type=Path, default=Path("outputs"), help="output folder")
    p.add_argument("--grid", action="store_true", help="also save a grid of all images")
    p.add_argument("--from-png", type=Path, help="take the parameters stored in this PNG")
    p.add_argument("--dtype", default="auto", help="auto | fp32 | bf16 | fp16 (default auto)")
    p.add_argument(
        "--max-pixels",
        type=int,
        default=GenerationLimits().max_pixels,
        help="largest width x height of an image or init image (default 4096 x 4096)",
    )
    p.add_argument("--no-limits", action="store_true",
                   help="no limits on steps, pixels or estimated memory")  # fmt: skip
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    tiling = "VAE encode/decode in tiles when the longer side exceeds this (0: never)"
    p.add_argument("--vae-tiling-above", type=int, default=2048, metavar="PIXELS", help=tiling)
    add_adapter_arguments(p)
    if mode != "txt2img":
        p.add_argument("--init-image", type=Path, required=True, help="the input image")
        p.add_argument("--strength", type=float, help="denoising strength in [0, 1]")
    if mode == "inpaint":
        p.add_argument("--mask", type=Path, required=True, help="mask: white = repaint")
    flags.add_arguments(p, mode)
    add_control_arguments(p)
    add_acceleration_arguments(p)


def _options(args: argparse.Namespace) -> dict:
    """Generation options: command line > --from-png > defaults."""
    opts = {k: getattr(args, k, None) for k in DEFAULTS}
    stored = None
    if args.from_png is not None:
        try:
            stored = parameters_from_infotext(read_png_parameters(args.from_png))
        except ValueError as exc:
            raise ValueError(f"--from-png {args.from_png}: {exc}") from None
        for key, attr in _FROM_PNG.items():
            if opts[key] is None:
                opts[key] = getattr(stored, attr)
        opts["lora_hashes"] = stored.extra.get("Lora hashes")
        opts["ti_hashes"] = stored.extra.get("TI hashes")
    opts["stored"] = stored
    opts["prediction"] = args.prediction or (stored and stored.prediction)
    opts["prompts"] = [opts["prompt"]]
    if args.from_file is not None:
        opts["prompts"] = flags.read_prompt_file(args.from_file)
        opts["prompt"] = opts["prompts"][0]
    for key, value in DEFAULTS.items():
        if opts[key] is None and not (key in ("width", "height") and args.mode != "txt2img"):
            opts[key] = value
    if opts["strength"] is None:
        opts["strength"] = 1.0 if args.mode == "inpaint" else 0.75
    return opts


def _limits(args: argparse.Namespace) -> GenerationLimits:
    if args.no_limits:
        return NO_LIMITS
    if args.max_pixels is not None and args.max_pixels < 1:
        raise ValueError(f"--max-pixels must be >= 1, got {args.max_pixels}")
    return GenerationLimits(max_pixels=args.max_pixels)


def _check_numbers(args: argparse.Namespace, opts: dict) -> None:
    for name in ("width", "height"):
        if opts[name] is not None and (opts[name] <= 0 or opts[name] % 8):
            raise ValueError(f"--{name} must be a positive multiple of 8, got {opts[name]}")
    if opts["steps"] < 1:
        raise ValueError(f"--steps must be >= 1, got {opts['steps']}")
    for name in ("batch_size", "n_iter"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not (math.isfinite(opts["cfg"]) and opts["cfg"] >= 0):
        raise ValueError(f"--cfg must be a finite number >= 0, got {opts['cfg']}")
    if not 0.0 <= opts["strength"] <= 1.0:  # also refuses NaN
        raise ValueError(f"--strength must be in [0, 1], got {opts['strength']}")
    if opts["seed"] != -1:
        check_seed(opts["seed"], args.batch_size * args.n_iter, "--seed")
    if args.vae_tiling_above < 0:
        raise ValueError(f"--vae-tiling-above must be >= 0, got {args.vae_tiling_above}")
    _check_flags(args, opts)


def _check_flags(args: argparse.Namespace, opts: dict) -> None:
    """The options of ``generation_flags``, checked before loading (messages name the flag)."""
    check_acceleration(args)
    o = flags.generation_options(args, opts["stored"])  # HiresFix checks its own fields
    if o["clip_skip"] < 1:
        raise ValueError(f"--clip-skip must be >= 1 (1 = last layer), got {o['clip_skip']}")
    for name in ("guidance_rescale", "variation_strength"):
        if not 0.0 <= o[name] <= 1.0:  # also refuses NaN
            raise ValueError(f"--{name.replace('_', '-')} must be in [0, 1], got {o[name]}")
    if o["eta"] is not None and not 0.0 <= o["eta"] <= 1e3:
        raise ValueError(f"--eta must be a number >= 0, got {o['eta']}")
    if o["variation_strength"] and o["variation_seed"] is None:
        raise ValueError("--variation-strength needs a --variation-seed")
    if o["variation_seed"] is not None:
        check_seed(o["variation_seed"], 1, "--variation-seed")
    refiner = getattr(args, "refiner", None)
    if refiner is not None and not refiner.exists():
        raise ValueError(f"refiner checkpoint not found: {refiner}")
    switch = getattr(args, "refiner_switch_at", None)
    if switch is not None and not 0.0 <= switch <= 1.0:
        raise ValueError(f"--refiner-switch-at must be in [0, 1], got {switch}")
    if refiner is not None and o.get("hires") is not None:
        raise ValueError("--hires with --refiner is not supported; run them one at a time")
    opts["options"] = o


def _check_images(args: argparse.Namespace, opts: dict, limits: GenerationLimits) -> tuple:
    """(width, height) of the output once the init image (and mask) are read."""
    if args.mode == "txt2img":
        return opts["width"], opts["height"]
    image = load_image(args.init_image, max_pixels=limits.max_pixels)
    w, h = (opts["width"] or image.width), (opts["height"] or image.height)
    if args.mode == "inpaint":
        mask = load_image(args.mask, "L", max_pixels=limits.max_pixels)
        if mask.size != image.size:
            raise ValueError(
                f"mask {args.mask} has size {mask.size}, the init image {image.size}; "
                "they must match"
            )
    if w % 8 or h % 8:
        raise ValueError(
            f"the image size {w}x{h} must be a multiple of 8 on both sides; resize it or give "
            "--width/--height"
        )
    return w, h


def _check(args: argparse.Namespace, opts: dict) -> tuple[torch.device, torch.dtype]:
    """Everything that can be checked before loading the model; (device, dtype)."""
    if not isinstance(opts["prompt"], str):
        raise ValueError("give a prompt with --prompt (or --from-png IMAGE, --from-file FILE)")
    if not args.ckpt.exists():
        raise ValueError(f"checkpoint not found: {args.ckpt}")
    _check_numbers(args, opts)
    limits = _limits(args)
    try:
        device = resolve_device(args.device)
    except ValueError as exc:
        raise ValueError(f"--device: {exc}") from None
    try:
        dtype = resolve_dtype(args.dtype, device)
    except ValueError as exc:
        raise ValueError(f"--dtype: {exc}") from None
    resolve_sampler(opts["sampler"])
    if opts["scheduler"] is not None:
        resolve_scheduler(opts["scheduler"])
    check_outdir(args.outdir)
    w, h = _check_images(args, opts, limits)
    opts["size"] = (w, h)
    hires = opts["options"].get("hires")
    steps = opts["steps"]
    if hires is not None:  # the larger second pass bounds memory and pixels
        w, h = hires.target_size(w, h)
        steps += hires.steps or opts["steps"]
    tile = 512 if args.vae_tiling_above and max(w, h) > args.vae_tiling_above else None
    check_generation(w, h, args.batch_size, steps, limits, ModelSize(tile_size=tile),
                     device, dtype)  # fmt: skip
    if args.grid and args.batch_size * args.n_iter > 1:
        check_pixels(w * args.batch_size, h * args.n_iter, limits, "grid")
    return device, dtype


def run(args: argparse.Namespace) -> int:
    written: list = []
    total = getattr(args, "batch_size", 1) * getattr(args, "n_iter", 1)
    try:
        return _run(args, written)
    except KeyboardInterrupt:
        print(f"interrupted: wrote {len(written)} of {total} images", file=sys.stderr)
        return INTERRUPTED
    except MemoryError:
        raise ValueError(
            f"out of memory after {len(written)} of {total} images; use a smaller size or batch"
        ) from None


def _run(args: argparse.Namespace, written: list) -> int:
    from genmodels.pipelines import generate
    from genmodels.pipelines.loading import load_pipeline

    opts = _options(args)
    device, dtype = _check(args, opts)
    limits = _limits(args)
    if opts["stored"] is not None:
        flags.warn_ignored(args, opts["stored"])
    plans = [plan_adapters(args, p, opts.get("lora_hashes"), opts.get("ti_hashes"))
             for p in opts["prompts"]]  # fmt: skip
    opts["prompts"] = [plan.prompt for plan in plans]  # with the tags of --lora files
    flags.check_same_loras(opts["prompts"])  # --from-file: the LoRAs are applied once
    adapters, opts["prompt"] = plans[0], opts["prompts"][0]
    controls = control_specs(args, limits.max_pixels)
    load = dict(dtype=dtype, device=device, vae=args.vae, prediction=opts["prediction"])
    pipe = load_pipeline(args.ckpt, **load)
    apply_adapters(pipe, adapters, opts["negative_prompt"])
    if args.vae_tiling_above:
        pipe.vae.tiling = TilingConfig(min_size=args.vae_tiling_above)
    model_id = dict(model_hash=model_hash(args.ckpt), model_name=args.ckpt.stem,
                    prediction=opts["prediction"])  # fmt: skip
    stored = opts["stored"]
    if stored is not None and stored.model_hash not in (None, model_id["model_hash"]):
        print(f"warning: --from-png {args.from_png} was made with model {stored.model_name} "
              f"[{stored.model_hash}], not {args.ckpt.name}", file=sys.stderr)  # fmt: skip
    if args.vae is not None:  # A1111: "VAE hash" (short sha256 of the file) and "VAE" (its name)
        model_id.update(vae_hash=model_hash(args.vae), vae_name=args.vae.name)
    options = _model_options(args, opts, pipe, load, model_id)
    common = dict(
        negative_prompt=opts["negative_prompt"], steps=opts["steps"], cfg_scale=opts["cfg"],
        sampler=opts["sampler"], scheduler=opts["scheduler"], batch_size=args.batch_size,
        limits=limits, control=load_units(controls, pipe) or None, **options,
    )  # fmt: skip
    strength = None if args.mode == "txt2img" else opts["strength"]
    hires = options.get("hires")
    per_run = generate.sampling_steps(opts["steps"], strength)
    per_run += 0 if hires is None else hires.steps or opts["steps"]
    total = per_run * args.n_iter * len(opts["prompts"])
    bar = None if args.quiet else _progress(total, args.mode)
    callback = None if bar is None else (lambda info: bar.update(1))
    seed = generate.resolve_seeds(opts["seed"], args.batch_size * args.n_iter)[0]
    images, first = [], None
    jobs = [(prompt, it) for prompt in opts["prompts"] for it in range(args.n_iter)]
    try:
        for prompt, it in jobs:  # each prompt of --from-file starts at the same seed (A1111)
            kw = dict(common, prompt=prompt, seed=seed + it * args.batch_size, callback=callback)
            out = _generate_once(generate, pipe, args, opts, kw)
            for params, image in zip(out.parameters, out.images):
                text = format_infotext(replace(params, **model_id))
                written.append(write_output(args.outdir, image_name(params.seed), image, text))
                _print(written[-1], bar)
                images.append(image)
                first = first or text
            if bar is not None:
                bar.set_postfix(images=len(written))
        if args.grid and len(images) > 1:
            grid = image_grid(images, cols=args.batch_size)
            _print(write_output(args.outdir, grid_name, grid, first), bar)
    finally:
        if bar is not None:
            bar.close()
    return 0


def _model_options(args: argparse.Namespace, opts: dict, pipe, load: dict, model_id: dict) -> dict:
    """Generation options that need the loaded model: the SDXL sizes and the refiner."""
    from genmodels.pipelines.conditioning import SDXLSizeConditioning
    from genmodels.pipelines.loading import load_pipeline

    options = dict(opts["options"])
    sizes = flags.sdxl_fields(args, opts["stored"])
    if sizes and pipe.is_sdxl:
        wh = sizes.get("sdxl_original_size", opts["size"])
        target = sizes.get("sdxl_target_size")
        options["sdxl"] = SDXLSizeConditioning(
            original_size=(wh[1], wh[0]), crop_coords_top_left=sizes.get("sdxl_crop", (0, 0)),
            target_size=None if target is None else (target[1], target[0]),
            aesthetic_score=sizes.get("aesthetic_score", 6.0),
            negative_aesthetic_score=sizes.get("negative_aesthetic_score", 2.5),
        )  # fmt: skip
    elif sizes:
        print(f"warning: SDXL size settings ignored: {args.ckpt} is {pipe.model_type}",
              file=sys.stderr)  # fmt: skip
    refiner = getattr(args, "refiner", None)
    if refiner is not None:
        options["refiner"] = load_pipeline(refiner, **dict(load, prediction=None))
        stored = opts["stored"]
        switch = args.refiner_switch_at
        if switch is None:
            switch = stored.refiner_switch_at if stored and stored.refiner_switch_at else 0.8
        options["refiner_switch_at"] = switch
        model_id.update(refiner_hash=model_hash(refiner))
    return options


def _print(path: Path, bar) -> None:
    if bar is not None:
        bar.write(str(path), file=sys.stdout)
    else:
        print(path, flush=True)


def _generate_once(generate, pipe, args: argparse.Namespace, opts: dict, kw: dict):
    if args.mode == "txt2img":
        return generate.txt2img(pipe, width=opts["width"], height=opts["height"], **kw)
    if args.mode == "img2img":
        size = dict(width=opts["width"], height=opts["height"])
        return generate.img2img(pipe, args.init_image, strength=opts["strength"], **size, **kw)
    size = dict(width=opts["width"], height=opts["height"])
    return generate.inpaint(
        pipe, args.init_image, args.mask, strength=opts["strength"], **size, **kw
    )


def _progress(total: int, mode: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=mode, unit="step", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry (``python -m genmodels.cli.generate txt2img ...``), as ``genmodels``."""
    parser = argparse.ArgumentParser(prog="genmodels")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ValueError as exc:
        print(f"genmodels {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
