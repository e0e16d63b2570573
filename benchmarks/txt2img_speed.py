"""A whole 512x512 txt2img job, genmodels vs diffusers: wall time and peak memory.

Both load the same diffusers folder of an SD 1.5-architecture model with random weights (built
by genmodels and written by its diffusers converter; made once under ``--workdir``), in bf16
with channels_last, and run the same job: one prompt, ``--steps`` Euler steps with classifier-
free guidance (cond and uncond batched), VAE decode. Each runs in a fresh subprocess, so the
peak resident memory (``VmHWM``) of each is its own: loading, text encoding, sampling, decoding.
Also prints the job's matmul floor: the UNet's and VAE's FLOPs at the bf16 2048^3 matmul rate.

    python benchmarks/txt2img_speed.py [--steps 20] [--size 512] [--workdir /tmp/txt2img_bench]
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


def job_ours(folder: Path, steps: int, size: int) -> dict[str, float]:
    import genmodels

    t0 = time.perf_counter()
    pipe = genmodels.load_pipeline(folder, dtype=torch.bfloat16)
    pipe.unet.to(memory_format=torch.channels_last)
    pipe.vae.to(memory_format=torch.channels_last)
    t1 = time.perf_counter()
    pipe.txt2img(PROMPT, width=size, height=size, steps=steps, cfg_scale=7.0, sampler="euler",
                 seed=0)  # fmt: skip
    return {"load_s": t1 - t0, "job_s": time.perf_counter() - t1}


def job_diffusers(folder: Path, steps: int, size: int) -> dict[str, float]:
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    t0 = time.perf_counter()
    pipe = StableDiffusionPipeline.from_pretrained(
        folder, torch_dtype=torch.bfloat16, safety_checker=None, requires_safety_checker=False
    )
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.unet.to(memory_format=torch.channels_last)
    pipe.vae.to(memory_format=torch.channels_last)
    pipe.set_progress_bar_config(disable=True)
    t1 = time.perf_counter()
    generator = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        pipe(PROMPT, height=size, width=size, num_inference_steps=steps, guidance_scale=7.0,
             generator=generator)  # fmt: skip
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
    ap.add_argument("--job", choices=("ours", "diffusers"), default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    folder = Path(args.workdir) / "sd15-random"
    if args.job is not None:  # the child: one job, figures as JSON on the last line
        job = job_ours if args.job == "ours" else job_diffusers
        figures = job(folder, args.steps, args.size)
        print(json.dumps({**figures, "peak_gib": _peak_rss_gib()}))
        return
    if not (folder / "model_index.json").is_file():
        print(f"writing a random SD 1.5 model to {folder} ...", flush=True)
        folder.parent.mkdir(parents=True, exist_ok=True)
        make_model(folder)
    results = {}
    for job in ("ours", "diffusers"):
        cmd = [sys.executable, __file__, "--job", job, "--steps", str(args.steps),
               "--size", str(args.size), "--workdir", args.workdir]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        results[job] = json.loads(out.strip().splitlines()[-1])
        print(f"{job:10s} {results[job]}", flush=True)
    ours, ref = results["ours"], results["diffusers"]
    floor = floor_s(args.steps, args.size)
    print(
        f"{args.size}x{args.size}, {args.steps} Euler steps with CFG, bf16 channels_last, "
        f"threads {torch.get_num_threads()}: ours {ours['job_s']:.1f} s "
        f"(peak {ours['peak_gib']:.2f} GiB), diffusers {ref['job_s']:.1f} s "
        f"(peak {ref['peak_gib']:.2f} GiB): speed-up {ref['job_s'] / ours['job_s']:.2f}x; "
        f"matmul floor {floor:.1f} s (ours at {100 * floor / ours['job_s']:.0f}%)"
    )


if __name__ == "__main__":
    main()
