"""``genmodels txt2img | img2img | inpaint``: images from a checkpoint and a prompt.

    genmodels txt2img --ckpt model.safetensors --prompt "a cat" --steps 20 --seed 1 --n-iter 2
    genmodels img2img --ckpt model.safetensors --prompt "a cat" --init-image in.png --strength 0.6
    genmodels inpaint --ckpt model.safetensors --prompt "a cat" --init-image in.png --mask m.png
    genmodels txt2img --ckpt model.safetensors --from-png outputs/00000-1.png   # re-run it

Files are ``<outdir>/<index>-<seed>.png`` with the A1111 ``parameters`` text chunk. Every input
is checked before the model is loaded, and images are written only once all are generated (each
atomically), so bad input or a failure leaves no partial files.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch

from genmodels.diffusion.samplers.registry import resolve_sampler
from genmodels.diffusion.schedules import resolve_scheduler
from genmodels.models.tiling import TilingConfig
from genmodels.pipelines.images import image_grid, load_image, save_png
from genmodels.pipelines.metadata import (
    GenerationParameters,
    format_infotext,
    model_hash,
    parameters_from_infotext,
    read_png_parameters,
)

MODES = ("txt2img", "img2img", "inpaint")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
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
    p.add_argument("--prompt", help="the prompt (A1111 emphasis syntax and BREAK)")
    p.add_argument("--negative-prompt", help="negative prompt (default: empty)")
    p.add_argument("--steps", type=int, help="sampling steps (default 20)")
    p.add_argument("--cfg", type=float, help="classifier-free guidance scale (default 7)")
    p.add_argument("--sampler", help="sampler name or A1111 name (default euler)")
    p.add_argument("--scheduler", help="sigma schedule (default: the sampler's, else normal)")
    p.add_argument("--seed", type=int, help="seed of the first image (default -1: random)")
    p.add_argument("--width", type=int, help="width in pixels (multiple of 8, default 512)")
    p.add_argument("--height", type=int, help="height in pixels (multiple of 8, default 512)")
    p.add_argument("--batch-size", type=int, default=1, help="images per sampling run")
    p.add_argument("--n-iter", type=int, default=1, help="number of sampling runs")
    p.add_argument("--outdir", type=Path, default=Path("outputs"), help="output folder")
    p.add_argument("--grid", action="store_true", help="also save a grid of all images")
    p.add_argument("--from-png", type=Path, help="take the parameters stored in this PNG")
    p.add_argument("--dtype", default="auto", help="auto | fp32 | bf16 | fp16 (default auto)")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    tiling = "VAE encode/decode in tiles when the longer side exceeds this (0: never)"
    p.add_argument("--vae-tiling-above", type=int, default=2048, metavar="PIXELS", help=tiling)
    if mode != "txt2img":
        p.add_argument("--init-image", type=Path, required=True, help="the input image")
        p.add_argument("--strength", type=float, help="denoising strength in [0, 1]")
    if mode == "inpaint":
        p.add_argument("--mask", type=Path, required=True, help="mask: white = repaint")


def cpu_supports_bf16(cpuinfo: str | None = None) -> bool:
    """AMX-BF16 or AVX512-BF16 in /proc/cpuinfo's flags (False where it cannot be read)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    flags = set(re.findall(r"[\w.]+", " ".join(re.findall(r"^flags\s*:(.*)$", cpuinfo, re.M))))
    return bool(flags & {"amx_bf16", "avx512_bf16"})


def resolve_dtype(name: str, device: torch.device, cpuinfo: str | None = None) -> torch.dtype:
    """``auto``: fp16 on CUDA, bf16 on a CPU with AMX/AVX512-BF16, else fp32."""
    if name == "auto":
        if device.type == "cuda":
            return torch.float16
        return torch.bfloat16 if cpu_supports_bf16(cpuinfo) else torch.float32
    if name not in DTYPES:
        raise ValueError(f"unknown --dtype {name!r}; valid: auto, {', '.join(DTYPES)}")
    return DTYPES[name]


def _options(args: argparse.Namespace) -> dict:
    """Generation options: command line > --from-png > defaults."""
    opts = {k: getattr(args, k, None) for k in DEFAULTS}
    if args.from_png is not None:
        stored = parameters_from_infotext(read_png_parameters(args.from_png))
        for key, attr in _FROM_PNG.items():
            if opts[key] is None:
                opts[key] = getattr(stored, attr)
    for key, value in DEFAULTS.items():
        if opts[key] is None and not (key in ("width", "height") and args.mode != "txt2img"):
            opts[key] = value
    if opts["strength"] is None:
        opts["strength"] = 1.0 if args.mode == "inpaint" else 0.75
    return opts


def _check(args: argparse.Namespace, opts: dict) -> None:
    """Everything that can be checked before loading the model."""
    if not isinstance(opts["prompt"], str):
        raise ValueError("give a prompt with --prompt (or --from-png IMAGE)")
    if not args.ckpt.exists():
        raise ValueError(f"checkpoint not found: {args.ckpt}")
    for name in ("width", "height"):
        if opts[name] is not None and (opts[name] <= 0 or opts[name] % 8):
            raise ValueError(f"--{name} must be a positive multiple of 8, got {opts[name]}")
    if opts["steps"] < 1:
        raise ValueError(f"--steps must be >= 1, got {opts['steps']}")
    for name in ("batch_size", "n_iter"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not 0.0 <= opts["strength"] <= 1.0:
        raise ValueError(f"--strength must be in [0, 1], got {opts['strength']}")
    resolve_sampler(opts["sampler"])
    if opts["scheduler"] is not None:
        resolve_scheduler(opts["scheduler"])
    if args.mode != "txt2img":
        image = load_image(args.init_image)
        w, h = (opts["width"] or image.width), (opts["height"] or image.height)
        if args.mode == "inpaint":
            w, h = image.size
            mask = load_image(args.mask, "L")
            if mask.size != image.size:
                raise ValueError(
                    f"mask {args.mask} has size {mask.size}, the init image {image.size}; "
                    "they must match"
                )
        if w % 8 or h % 8:
            raise ValueError(f"the image size {w}x{h} must be a multiple of 8 on both sides")
    if args.vae_tiling_above < 0:
        raise ValueError(f"--vae-tiling-above must be >= 0, got {args.vae_tiling_above}")


def _next_index(outdir: Path) -> int:
    numbers = [int(m.group(1)) for f in outdir.glob("*.png") if (m := re.match(r"(\d+)-", f.name))]
    return max(numbers, default=-1) + 1


def run(args: argparse.Namespace) -> int:
    from genmodels.pipelines import generate
    from genmodels.pipelines.loading import load_pipeline

    opts = _options(args)
    _check(args, opts)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = resolve_dtype(args.dtype, device)
    pipe = load_pipeline(args.ckpt, dtype=dtype, device=device, vae=args.vae)
    if args.vae_tiling_above:
        pipe.vae.tiling = TilingConfig(min_size=args.vae_tiling_above)
    model_id = dict(model_hash=model_hash(args.ckpt), model_name=args.ckpt.stem)
    common = dict(
        prompt=opts["prompt"], negative_prompt=opts["negative_prompt"], steps=opts["steps"],
        cfg_scale=opts["cfg"], sampler=opts["sampler"], scheduler=opts["scheduler"],
        batch_size=args.batch_size,
    )  # fmt: skip
    strength = None if args.mode == "txt2img" else opts["strength"]
    total = generate.sampling_steps(opts["steps"], strength) * args.n_iter
    bar = None if args.quiet else _progress(total, args.mode)
    callback = None if bar is None else (lambda info: bar.update(1))
    seed = generate.resolve_seeds(opts["seed"], 1)[0]
    results: list[tuple[GenerationParameters, object]] = []
    try:
        for it in range(args.n_iter):
            kw = dict(common, seed=seed + it * args.batch_size, callback=callback)
            out = _generate_once(generate, pipe, args, opts, kw)
            for params, image in zip(out.parameters, out.images):
                results.append((replace(params, **model_id), image))
            if bar is not None:
                bar.set_postfix(images=len(results))
    finally:
        if bar is not None:
            bar.close()
    _write(args, results)
    return 0


def _generate_once(generate, pipe, args: argparse.Namespace, opts: dict, kw: dict):
    if args.mode == "txt2img":
        return generate.txt2img(pipe, width=opts["width"], height=opts["height"], **kw)
    if args.mode == "img2img":
        size = dict(width=opts["width"], height=opts["height"])
        return generate.img2img(pipe, args.init_image, strength=opts["strength"], **size, **kw)
    return generate.inpaint(pipe, args.init_image, args.mask, strength=opts["strength"], **kw)


def _progress(total: int, mode: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=mode, unit="step", file=sys.stderr)


def _write(args: argparse.Namespace, results: list) -> None:
    args.outdir.mkdir(parents=True, exist_ok=True)
    index = _next_index(args.outdir)
    written: list[Path] = []
    try:
        for i, (params, image) in enumerate(results):
            path = args.outdir / f"{index + i:05d}-{params.seed}.png"
            written.append(save_png(image, path, format_infotext(params)))
        if args.grid and len(results) > 1:
            grid = image_grid([image for _, image in results], cols=args.batch_size)
            path = args.outdir / f"grid-{index:05d}.png"
            written.append(save_png(grid, path, format_infotext(results[0][0])))
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    for path in written:
        print(path)


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
