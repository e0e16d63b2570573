"""What feature caching (DeepCache) and the CFG cut-off cost in quality, on a model we trained.

    python benchmarks/ldm_digits.py --out runs/ldm-digits      # once: trains the latent model
    python benchmarks/cache_quality.py --run runs/ldm-digits/ldm [--per-class 50]
    python benchmarks/cache_quality.py --text --run runs/ldm-digits/text --vae runs/ldm-digits/ae

Random weights say nothing about how caching changes images, so this samples models we trained:
the class-conditional latent digits model of ``benchmarks/ldm_digits.py``, or with ``--text`` a
text-conditional latent digits model (captions "a handwritten digit seven" through the pretrained
MiniLM encoder, cross-attention UNet on the same VAE's latents; trained here when ``--run`` holds
no run yet). Every setting uses the same seeds; per setting it prints: the share of UNet
evaluations that were full ones, the sampling time (after one warm-up run), the class accuracy
and Fréchet distance of the digits classifier (as ``genmodels demo``), and the PSNR / SSIM of
each image against the exact run of the same seed (mean and worst 5%).

The digits UNet is tiny (4 input blocks, 4x4 latents), so its times show the evaluation count,
not the speed-up an SD UNet gets (``benchmarks/txt2img_speed.py`` measures that).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from genmodels.evaluation.digits_classifier import DigitsClassifier
from genmodels.evaluation.similarity import psnr_per_image, ssim_per_image
from genmodels.models.feature_cache import DeepCache
from genmodels.pipelines.trained import TrainedRun, load_run, sample_cond

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


@dataclass(frozen=True)
class Setting:
    name: str
    interval: int = 1  # 1: no caching
    depth: int = 1
    cfg_cutoff: float = 0.0


def settings(n_blocks: int, sigma_max: float) -> list[Setting]:
    out = [Setting("exact")]
    for interval in (2, 3, 4, 5):
        for depth in range(1, n_blocks):
            out.append(Setting(f"cache {interval}/{depth}", interval, depth))
    for frac in (0.02, 0.05, 0.1, 0.2):  # cut-offs as fractions of the largest sigma
        cutoff = round(frac * sigma_max, 3)
        out.append(Setting(f"cfg-cutoff {cutoff}", cfg_cutoff=cutoff))
    out.append(Setting(f"cache 3/1 + cutoff {round(0.05 * sigma_max, 3)}", 3, 1,
                       round(0.05 * sigma_max, 3)))  # fmt: skip
    return out


def train_text_model(run: Path, vae: Path, steps: int) -> None:
    """The text-conditional latent digits model: ``digits-ldm`` with MiniLM captions instead of
    class labels (cross-attention at both levels)."""
    from genmodels.data.digits import load_digits_tensor
    from genmodels.data.tensor_dataset import ImageTensorDataset
    from genmodels.training.diffusion import Trainer
    from genmodels.training.tasks import build_config

    overrides = [
        f"out_dir={run}", f"latent.vae_path={vae}", f"steps={steps}", "text.encoder=minilm",
        "model.num_classes=null", "model.context_dim=384", "model.attention_resolutions=[1,2]",
        "progress=false",
    ]  # fmt: skip
    cfg = build_config("diffusion", None, overrides, preset="digits-ldm")
    images, labels = load_digits_tensor(cfg.data.size)
    captions = [f"a handwritten digit {NAMES[int(y)]}" for y in labels]
    Trainer(cfg, ImageTensorDataset(images, captions=captions), overwrite=True).fit()


def conditioning(run: TrainedRun, labels: Tensor) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(cond, uncond) asking for digit ``labels``: class ids, or captions of a text run."""
    if run.text is None:
        return {"y": labels}, {"y": torch.full((1,), run.null, dtype=torch.long)}
    captions = [f"a handwritten digit {NAMES[int(y)]}" for y in labels]
    return {"context": run.text.lookup(captions)}, {"context": run.text.empty.unsqueeze(0)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--run", default="runs/ldm-digits/ldm")
    p.add_argument("--per-class", type=int, default=50)
    p.add_argument("--steps", type=int, default=None, help="sampling steps (the run's)")
    p.add_argument("--sampler", default="dpmpp_2m")
    p.add_argument("--out", default=None, help="write the figures as JSON here")
    p.add_argument("--text", action="store_true", help="the text-conditional model")
    p.add_argument("--vae", default="runs/ldm-digits/ae", help="--text: the autoencoder run")
    p.add_argument("--train-steps", type=int, default=1500, help="--text: training steps")
    args = p.parse_args()

    if args.text and not (Path(args.run) / "checkpoints").is_dir():
        t0 = time.perf_counter()
        train_text_model(Path(args.run), Path(args.vae), args.train_steps)
        print(f"trained {args.run} in {time.perf_counter() - t0:.0f}s", flush=True)
    run = load_run(args.run)
    cfg = run.cfg
    steps = args.steps or cfg.sample_steps
    labels = torch.arange(10).repeat_interleave(args.per_class)
    cond, uncond = conditioning(run, labels)
    judge = DigitsClassifier(size=cfg.size, seed=0)
    unet = run.denoiser.model
    rows, exact_pixels = [], None
    sample_cond(
        run.denoiser,
        (20, *run.sample_shape),
        {k: v[:20] for k, v in cond.items()},
        uncond,
        steps=steps,
        guidance_scale=cfg.guidance_scale,
    )  # warm-up; fmt: skip
    for s in settings(len(unet.input_blocks), float(run.denoiser.sigma_max)):
        cache = DeepCache(s.interval, s.depth)
        t0 = time.perf_counter()
        latents = sample_cond(
            run.denoiser, (len(labels), *run.sample_shape), cond, uncond, steps=steps,
            guidance_scale=cfg.guidance_scale, sampler=args.sampler, seed=0,
            cfg_cutoff=s.cfg_cutoff, cache=cache if s.interval > 1 else None,
        )  # fmt: skip
        seconds = time.perf_counter() - t0
        pixels = ((run.decode(latents) + 1) / 2).clamp(0, 1)
        report = judge.evaluate(pixels * 2 - 1, labels)
        if exact_pixels is None:
            exact_pixels = pixels
        psnr = psnr_per_image(pixels, exact_pixels).clamp(max=99.0)
        ssim = ssim_per_image(pixels, exact_pixels)
        rows.append({
            "setting": s.name,
            "full_evals": cache.full_calls if s.interval > 1 else steps,
            "evals": cache.calls if s.interval > 1 else steps,
            "seconds": round(seconds, 2), "accuracy": round(report.accuracy * 100, 1),
            "fd": round(report.fd, 3), "psnr_db": round(float(psnr.mean()), 1),
            "psnr_worst5_db": round(float(psnr.quantile(0.05)), 1),
            "ssim": round(float(ssim.mean()), 3),
            "ssim_worst5": round(float(ssim.quantile(0.05)), 3),
        })  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)

    print(f"\n{args.run}: {len(labels)} samples, {steps} {args.sampler} steps, guidance "
          f"{cfg.guidance_scale}, FD floor (real vs real) {report.fd_real:.2f}")  # fmt: skip
    cols = ["setting", "full evals", "time (s)", "accuracy %", "FD", "PSNR dB (worst 5%)",
            "SSIM (worst 5%)"]  # fmt: skip
    print("| " + " | ".join(cols) + " |\n" + "|---" * len(cols) + "|")
    for r in rows:
        print(f"| {r['setting']} | {r['full_evals']}/{r['evals']} | {r['seconds']} | "
              f"{r['accuracy']} | {r['fd']} | {r['psnr_db']} ({r['psnr_worst5_db']}) | "
              f"{r['ssim']} ({r['ssim_worst5']}) |")  # fmt: skip
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
