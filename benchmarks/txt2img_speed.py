"""A whole 512x512 txt2img job, genmodels vs diffusers: wall time and peak memory.

Both load the same diffusers folder of an SD 1.5-architecture model with random weights (built
by genmodels and written by its diffusers converter; made once under ``--workdir``), in bf16
with channels_last, and run the same job: a prompt and a negative prompt, ``--steps`` Euler
steps with classifier-free guidance 7.5 (cond and uncond batched), VAE decode. Each job runs in
a fresh subprocess, so the peak resident memory (``VmHWM``) of each is its own: loading, text
encoding, sampling, decoding. Also prints the job's matmul floor: the UNet's and VAE's FLOPs at
the bf16 2048^3 matmul rate.

``--jobs`` lists the jobs, each ``NAME[:OPTION=VALUE...]``:

- ``ours``: genmodels; options ``cache=N/K`` (DeepCache interval N, depth K) and ``ngms=SIGMA``
  (CFG cut-off);
- ``diffusers``: exact diffusers; options ``deepcache=N/B`` (the reference ``DeepCacheSDHelper``,
  interval N, branch B = our depth - 1) and ``tome=R`` (tomesd token merging, ratio R). Both are
  benchmark-only dependencies: ``pip install --no-deps DeepCache tomesd``.

    python benchmarks/txt2img_speed.py [--steps 20] [--size 512] [--workdir /tmp/txt2img_bench]
        [--jobs ours,diffusers,ours:cache=3/1,diffusers:deepcache=3/0,diffusers:tome=0.5]

Quality is not measured here (random weights): ``benchmarks/cache_quality.py`` measures what each
setting costs on trained models, and ours equals the reference DeepCache call for call
(``tests/models/test_feature_cache_parity.py``), so equal settings cost the same quality.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

PROMPT = "a lighthouse on a cliff at dusk, oil painting"
NEGATIVE = "blurry, low quality, watermark"
CFG = 7.5


def _peak_rss_gib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def make_model(folder: Path) -> None:
    """A random SD 1.5-architecture model as a diffusers folder (bf16 weights on disk)."""
    from genmodels.checkpoints.convert import convert_checkpoint
    from genmodels.pipelines.build import build_pipeline, save_pipeline

    single = folder.with_suffix(".safetensors")
    pipe = build_pipeline("sd1", "sd", "sd1", model_type="sd1", dtype=torch.bfloat16)
    save_pipeline(pipe, single)
    del pipe
    convert_checkpoint(single, folder, to="diffusers")
    single.unlink()


def parse_job(spec: str) -> tuple[str, dict[str, str]]:
    """``ours:cache=3/1:ngms=1.0`` -> ("ours", {"cache": "3/1", "ngms": "1.0"})."""
    name, *opts = spec.split(":")
    if name not in ("ours", "diffusers"):
        raise SystemExit(f"unknown job {name!r}: ours or diffusers")
    options = dict(opt.split("=", 1) for opt in opts)
    allowed = {"ours": {"cache", "ngms"}, "diffusers": {"deepcache", "tome"}}[name]
    if set(options) - allowed:
        raise SystemExit(f"{name} takes the options {sorted(allowed)}, got {sorted(options)}")
    return name, options


def job_ours(folder: Path, steps: int, size: int, options: dict[str, str]) -> dict[str, float]:
    import genmodels

    interval, depth = map(int, options.get("cache", "1/1").split("/"))
    cutoff = float(options.get("ngms", 0.0))

    t0 = time.perf_counter()
    pipe = genmodels.load_pipeline(folder, dtype=torch.bfloat16)
    pipe.unet.to(memory_format=torch.channels_last)
    pipe.vae.to(memory_format=torch.channels_last)
    t1 = time.perf_counter()
    pipe.txt2img(PROMPT, negative_prompt=NEGATIVE, width=size, height=size, steps=steps,
                 cfg_scale=CFG, sampler="euler", seed=0, cache_interval=interval,
                 cache_depth=depth, cfg_cutoff=cutoff)  # fmt: skip
    return {"load_s": t1 - t0, "job_s": time.perf_counter() - t1}


def job_diffusers(folder: Path, steps: int, size: int, options: dict[str, str]) -> dict[str, float]:
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    t0 = time.perf_counter()
    pipe = StableDiffusionPipeline.from_pretrained(
        folder, torch_dtype=torch.bfloat16, safety_checker=None, requires_safety_checker=False
    )
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.unet.to(memory_format=torch.channels_last)
    pipe.vae.to(memory_format=torch.channels_last)
    pipe.set_progress_bar_config(disable=True)
    if "deepcache" in options:
        from DeepCache import DeepCacheSDHelper

        interval, branch = map(int, options["deepcache"].split("/"))
        helper = DeepCacheSDHelper(pipe=pipe)
        helper.set_params(cache_interval=interval, cache_branch_id=branch)
        helper.enable()
    if "tome" in options:
        import tomesd

        tomesd.apply_patch(pipe, ratio=float(options["tome"]))
    t1 = time.perf_counter()
    generator = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        pipe(PROMPT, negative_prompt=NEGATIVE, height=size, width=size, num_inference_steps=steps,
             guidance_scale=CFG, generator=generator)  # fmt: skip
    return {"load_s": t1 - t0, "job_s": time.perf_counter() - t1}


def floor_s(steps: int, size: int) -> float:
    """Seconds of the job's UNet + VAE-decoder FLOPs at the bf16 2048^3 matmul rate."""
    from torch.utils.flop_counter import FlopCounterMode
    from unet_speed import matmul_gflops

    from genmodels.configs.autoencoder import get_autoencoder_config
    from genmodels.configs.unet import get_unet_config
    from genmodels.models.autoencoder_kl import AutoencoderKL
    from genmodels.models.unet import UNetModel

    with torch.device("meta"):
        unet = UNetModel(get_unet_config("sd1"))
        vae = AutoencoderKL(get_autoencoder_config("sd"))
        lat = size // 8
        with FlopCounterMode(display=False) as unet_count:
            unet(torch.randn(2, 4, lat, lat), torch.tensor([500.0, 500.0]), torch.randn(2, 77, 768))
        with FlopCounterMode(display=False) as vae_count:
            vae.decode(torch.randn(1, 4, lat, lat))
    total = steps * unet_count.get_total_flops() + vae_count.get_total_flops()
    return total / (matmul_gflops(torch.bfloat16) * 1e9)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--workdir", default="/tmp/txt2img_bench")
    ap.add_argument("--jobs", default="ours,diffusers", help="comma-separated job specs")
    ap.add_argument("--job", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    folder = Path(args.workdir) / "sd15-random"
    if args.job is not None:  # the child: one job, figures as JSON on the last line
        name, options = parse_job(args.job)
        job = job_ours if name == "ours" else job_diffusers
        figures = job(folder, args.steps, args.size, options)
        print(json.dumps({**figures, "peak_gib": _peak_rss_gib()}))
        return
    jobs = args.jobs.split(",")
    for spec in jobs:
        parse_job(spec)  # bad specs fail before any work
    if not (folder / "model_index.json").is_file():
        print(f"writing a random SD 1.5 model to {folder} ...", flush=True)
        folder.parent.mkdir(parents=True, exist_ok=True)
        make_model(folder)
    results = {}
    for job in jobs:
        cmd = [sys.executable, __file__, "--job", job, "--steps", str(args.steps),
               "--size", str(args.size), "--workdir", args.workdir]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        results[job] = json.loads(out.strip().splitlines()[-1])
        print(f"{job:28s} {results[job]}", flush=True)
    floor = floor_s(args.steps, args.size)
    base = results.get("diffusers")
    print(
        f"\n{args.size}x{args.size}, {args.steps} Euler steps, CFG {CFG} with a negative prompt, "
        f"bf16 channels_last, threads {torch.get_num_threads()}; matmul floor {floor:.1f} s"
    )
    print("| job | job s | load s | peak GiB | vs exact diffusers |\n|---|---|---|---|---|")
    for job, r in results.items():
        ratio = f"{base['job_s'] / r['job_s']:.2f}x" if base else "-"
        print(f"| {job} | {r['job_s']:.1f} | {r['load_s']:.1f} | {r['peak_gib']:.2f} | {ratio} |")


if __name__ == "__main__":
    main()
