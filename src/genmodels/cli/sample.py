"""``genmodels sample RUN``: images from a diffusion model trained with ``genmodels train``.

``RUN`` is the run's ``out_dir`` (its newest checkpoint is used) or one checkpoint directory
``out_dir/checkpoints/step-XXXXXXXX``. The EMA weights are used (when the run kept them) unless
``--raw``; a latent run decodes through the VAE it was trained with, a text-conditional run
encodes ``--prompt`` with its frozen text encoder. A class-conditional run takes ``--class``
(default: the classes in turn, image i of class i mod num_classes). Guidance (``--cfg``) uses
the null class or the empty prompt. Image i is drawn with seed ``seed + i``, so ``--n 4 --seed
10`` gives the images of four single runs with seeds 10..13. Every PNG carries its settings as
JSON in a ``parameters`` text chunk; ``--grid`` also writes them side by side. Files are named
A1111's way, ``NNNNN-seed.png`` / ``grid-NNNNN.png`` with the next free number of the folder, so
no run overwrites another's (``pipelines.outputs``).
"""

from __future__ import annotations

import argparse
import json
import math

import torch
from PIL import Image

from genmodels.cli.acceleration import add_acceleration_arguments, check_acceleration, deep_cache
from genmodels.diffusion.samplers.registry import resolve_sampler
from genmodels.pipelines.finite import check_finite
from genmodels.pipelines.images import image_grid, tensor_to_pil
from genmodels.pipelines.limits import MAX_PIXELS, MAX_STEPS
from genmodels.pipelines.outputs import check_outdir, grid_name, image_name, write_output
from genmodels.pipelines.seeds import check_seed
from genmodels.pipelines.trained import TrainedRun, load_run, sample_cond

__all__ = ["register", "run"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sample",
        help="sample images from a diffusion model trained with `genmodels train`",
        description=__doc__,
    )
    p.add_argument("run", help="the run's out_dir, or a checkpoint directory in it")
    p.add_argument("--class", dest="class_label", type=int, default=None,
                   help="class id (class-conditional runs; default: each in turn)")  # fmt: skip
    p.add_argument("--prompt", default=None, help="caption (text-conditional runs)")
    p.add_argument("--n", type=int, default=8, help="number of images")
    p.add_argument("--seed", type=int, default=0, help="seed of the first image")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (run's sample_steps)")
    p.add_argument("--sampler", default="dpmpp_2m", help="name, e.g. euler_ancestral or an "
                   "A1111 name such as 'DPM++ 2M Karras' (genmodels samplers)")  # fmt: skip
    p.add_argument("--scheduler", default=None, help="sigma schedule (default karras)")
    p.add_argument("--cfg", type=float, default=None, help="guidance scale (run's setting)")
    p.add_argument("--raw", action="store_true", help="the raw weights, not the EMA ones")
    p.add_argument("--vae", default=None, help="VAE file/folder replacing the run's vae_path")
    p.add_argument("--scale", type=int, default=1, help="enlarge the PNGs (nearest)")
    p.add_argument("--grid", action="store_true", help="also write grid-NNNNN.png")
    p.add_argument("--outdir", default="samples")
    add_acceleration_arguments(p)
    p.set_defaults(func=run)


def _conditioning(
    tr: TrainedRun, args: argparse.Namespace
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
    """(cond with N rows, uncond with one row) for the run's kind of conditioning."""
    n = args.n
    if tr.text is not None:
        if args.class_label is not None:
            raise ValueError("this run is text-conditional: use --prompt, not --class")
        if args.prompt is None:
            raise ValueError("this run is text-conditional: pass --prompt")
        context = tr.text.lookup([args.prompt]).expand(n, -1, -1)
        return {"context": context}, {"context": tr.text.empty.unsqueeze(0)}
    if args.prompt is not None:
        raise ValueError("this run is not text-conditional: --prompt does not apply")
    if tr.null is None:
        if args.class_label is not None:
            raise ValueError("this run is not class-conditional: --class does not apply")
        return {}, None
    if args.class_label is not None and not 0 <= args.class_label < tr.null:
        raise ValueError(f"--class {args.class_label} is out of range: 0..{tr.null - 1}")
    if args.class_label is None:
        labels = torch.arange(n) % tr.null
    else:
        labels = torch.full((n,), args.class_label, dtype=torch.long)
    return {"y": labels}, {"y": torch.full((1,), tr.null, dtype=torch.long)}


def _check_args(args: argparse.Namespace) -> None:
    """The arguments that can be checked before the run is loaded."""
    if args.n < 1 or args.scale < 1:
        raise ValueError(f"--n and --scale must be >= 1, got {args.n} and {args.scale}")
    if args.scale**2 > MAX_PIXELS:
        raise ValueError(f"--scale {args.scale} is more than {math.isqrt(MAX_PIXELS)}")
    if args.steps is not None and not 1 <= args.steps <= MAX_STEPS:
        raise ValueError(f"--steps must be in [1, {MAX_STEPS}], got {args.steps}")
    if args.cfg is not None and not (math.isfinite(args.cfg) and args.cfg >= 0):
        raise ValueError(f"--cfg must be a finite number >= 0, got {args.cfg}")
    check_acceleration(args)
    check_seed(args.seed, args.n, "--seed")
    check_outdir(args.outdir)


def _check_size(args: argparse.Namespace, size: tuple[int, int]) -> None:
    """Refuse (before sampling) outputs that ``--scale`` makes too large."""
    h, w = size[0] * args.scale, size[1] * args.scale
    if h * w > MAX_PIXELS or args.n * h * w * 3 > MAX_PIXELS * 3 * 16:
        raise ValueError(
            f"--n {args.n} images of {w}x{h} pixels (--scale {args.scale}) are more than the "
            f"limit of {MAX_PIXELS} pixels per image or {MAX_PIXELS * 16} in all"
        )


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    tr = load_run(args.run, use_ema=not args.raw, vae_path=args.vae)
    f = 1 if tr.vae is None else tr.vae.downsample_factor
    _check_size(args, (tr.sample_shape[-2] * f, tr.sample_shape[-1] * f))
    cond, uncond = _conditioning(tr, args)
    _, implied = resolve_sampler(args.sampler)
    scheduler = args.scheduler or implied or "karras"
    steps = args.steps if args.steps is not None else tr.cfg.sample_steps
    guidance = args.cfg if args.cfg is not None else tr.cfg.guidance_scale
    if uncond is None:
        guidance = 1.0  # unconditional: nothing to guide with
    x = sample_cond(
        tr.denoiser, (args.n, *tr.sample_shape), cond, uncond, steps=steps,
        guidance_scale=guidance, sampler=args.sampler, scheduler=scheduler, seed=args.seed,
        cfg_cutoff=args.cfg_cutoff or 0.0, cache=(cache := deep_cache(args)),
    )  # fmt: skip
    x = tr.decode(x)
    check_finite(x, "the sampled images (NaN/Inf weights in the run's checkpoint?)")
    images = tensor_to_pil((x + 1) / 2)
    if args.scale > 1:
        images = [im.resize((im.width * args.scale, im.height * args.scale), Image.NEAREST)
                  for im in images]  # fmt: skip
    labels = cond.get("y")
    for i, image in enumerate(images):
        params = {
            "run": str(tr.checkpoint), "weights": tr.weights,
            "prompt": args.prompt, "class": None if labels is None else int(labels[i]),
            "sampler": args.sampler, "scheduler": scheduler, "steps": steps, "cfg": guidance,
            "seed": args.seed + i,
        }  # fmt: skip
        if cache is not None:
            params |= {"cache_interval": cache.interval, "cache_depth": cache.depth}
        if args.cfg_cutoff:
            params["cfg_cutoff"] = args.cfg_cutoff
        print(write_output(args.outdir, image_name(args.seed + i), image, json.dumps(params)))
    if args.grid:
        # classes in turn: one column per class; otherwise about square
        cols = min(tr.null, args.n) if labels is not None and args.class_label is None else None
        print(write_output(args.outdir, grid_name, image_grid(images, cols=cols)))
    return 0
