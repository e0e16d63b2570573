"""VQGAN + class-conditional GPT on the built-in digits: the quality bars of issue 6.

Runs the ``vqgan-digits`` and ``transformer-digits`` training presets (what
``genmodels train --preset vqgan-digits`` / ``--preset transformer-digits`` do). Stage 1 trains
the ``digits`` VQGAN (16 px -> 4x4 codes) and reports reconstruction PSNR and codebook usage
over all 1797 digits (target usage >= 80%). Stage 2 trains a class-conditional GPT over the
codes and reports how often a scikit-learn classifier trained on real digits recognises
samples as their intended class (target >= 90%), with the Fréchet distance of its features.
The models are written to ``--out`` for ``genmodels vq-sample``.

    python benchmarks/vq_digits.py --vq-steps 800 --gpt-steps 1000 --out runs/vq_digits
"""

from __future__ import annotations

import argparse
import time

import torch

from genmodels.checkpoints.runs import load_transformer, load_vqgan
from genmodels.data.digits import load_digits_tensor
from genmodels.evaluation.digits_classifier import DigitsClassifier
from genmodels.pipelines.vq_transformer import sample_images
from genmodels.training.images import save_grid
from genmodels.training.tasks import build_config
from genmodels.training.transformer import train_transformer
from genmodels.training.vqgan import reconstruct_psnr, train_vqgan


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vq-steps", type=int, default=800)
    ap.add_argument("--gpt-steps", type=int, default=1000)
    ap.add_argument("--disc-start", type=int, default=400)
    ap.add_argument("--n-samples", type=int, default=500)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--top-k", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--out", default="runs/vq_digits")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    common = [f"out_dir={args.out}", f"device={args.device}"]
    vq_cfg = build_config(
        "vqgan", None,
        [f"steps={args.vq_steps}", f"loss.disc_start={args.disc_start}", *common],
        preset="vqgan-digits",
    )  # fmt: skip
    print(f"stage 1: VQGAN, precision {vq_cfg.precision}")
    t0 = time.perf_counter()
    train_vqgan(vq_cfg, overwrite=True)
    t_vq = time.perf_counter() - t0
    x, y = load_digits_tensor(16)
    vq = load_vqgan(args.out)
    psnr, counts = reconstruct_psnr(vq, x)
    usage = float((counts > 0).float().mean())
    print(f"VQGAN: PSNR {psnr:.2f} dB | codebook usage {usage * 100:.1f}% of {vq.n_codes} codes")

    gpt_cfg = build_config(
        "transformer", None,
        [f"vqgan_dir={args.out}", f"steps={args.gpt_steps}", "out_dir=null", *common[1:]],
        preset="transformer-digits",
    )  # fmt: skip
    print("stage 2: GPT")
    t0 = time.perf_counter()
    train_transformer(gpt_cfg, overwrite=True)
    t_gpt = time.perf_counter() - t0
    gpt, meta = load_transformer(args.out)
    print(f"GPT {sum(p.numel() for p in gpt.parameters()) / 1e3:.0f}k params")

    labels = torch.arange(args.n_samples) % 10
    samples = sample_images(
        vq, gpt, meta, labels, args.n_samples, seed=0, temperature=args.temperature,
        top_k=args.top_k,
    )  # fmt: skip
    save_grid(samples[:100], f"{args.out}/samples.png", nrow=10, scale=4)
    judge = DigitsClassifier(size=16)
    report = judge.evaluate(samples, labels)
    rec_report = judge.evaluate(vq(x)[0].clamp(-1, 1).detach(), y)
    print(f"reconstructions judged: {rec_report}")
    print(f"samples ({args.n_samples}, T={args.temperature}, top_k={args.top_k}): {report}")
    print(
        f"SUMMARY psnr_db={psnr:.2f} usage={usage:.3f} class_accuracy={report.accuracy:.3f} "
        f"fd={report.fd:.2f} vq_train_s={t_vq:.0f} gpt_train_s={t_gpt:.0f}"
    )


if __name__ == "__main__":
    main()
