"""VQGAN + class-conditional GPT on the built-in digits: the quality bars of issue 6.

Stage 1 trains the ``digits`` VQGAN preset (16 px -> 4x4 codes) and reports reconstruction
PSNR and codebook usage over all 1797 digits (target usage >= 80%). Stage 2 trains a
class-conditional GPT over the codes and reports how often a scikit-learn classifier trained on
real digits recognises samples as their intended class (target >= 90%), with the Fréchet
distance of its features. The models are written to ``--out`` for ``genmodels vq-sample``.

    python benchmarks/vq_digits.py --vq-steps 800 --gpt-steps 1000 --out runs/vq_digits
"""

from __future__ import annotations

import argparse
import time

import torch

from genmodels.configs.vqgan import get_vqgan_config
from genmodels.data.digits import load_digits_tensor
from genmodels.evaluation.digits_classifier import DigitsClassifier
from genmodels.models.gpt import GPT, GPTConfig
from genmodels.models.vqgan import VQModel
from genmodels.training.images import save_grid
from genmodels.training.transformer_train import (
    TransformerMeta,
    TransformerTrainConfig,
    encode_codes,
    sample_images,
    save_transformer,
    train_transformer,
)
from genmodels.training.vqgan_loss import VQGANLossConfig
from genmodels.training.vqgan_train import (
    VQGANTrainConfig,
    reconstruct_psnr,
    save_vqgan,
    train_vqgan,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vq-steps", type=int, default=800)
    ap.add_argument("--gpt-steps", type=int, default=1000)
    ap.add_argument("--disc-start", type=int, default=400)
    ap.add_argument("--n-samples", type=int, default=500)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--top-k", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="runs/vq_digits")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    log = lambda step, r: print(  # noqa: E731
        f"  step {step}: " + " ".join(f"{k}={v:.4g}" for k, v in r.items() if k != "step"),
        flush=True,
    )

    x, y = load_digits_tensor(16)
    vq_cfg = get_vqgan_config("digits")
    vq = VQModel(vq_cfg)
    loss_cfg = VQGANLossConfig(
        disc_start=args.disc_start,
        perceptual_weight=0.0,  # no local LPIPS weights for 1-channel 16 px digits
        l2_weight=1.0,
        disc_in_channels=1,
        disc_num_layers=2,
        disc_ndf=32,
        disc_weight=0.1,
    )
    train_cfg = VQGANTrainConfig(
        steps=args.vq_steps, batch_size=64, lr=2e-3, bf16=True, log_every=100, loss=loss_cfg
    )
    print(f"stage 1: VQGAN {sum(p.numel() for p in vq.parameters()) / 1e3:.0f}k params, bf16")
    t0 = time.perf_counter()
    train_vqgan(vq, x, train_cfg, callback=log)
    t_vq = time.perf_counter() - t0
    psnr, counts = reconstruct_psnr(vq, x)
    usage = float((counts > 0).float().mean())
    print(f"VQGAN: PSNR {psnr:.2f} dB | codebook usage {usage * 100:.1f}% of {vq.n_codes} codes")
    save_vqgan(args.out, vq)

    codes = encode_codes(vq, x)  # (N, 4, 4)
    h, w = codes.shape[1:]
    gpt_cfg = GPTConfig(
        vocab_size=vq.n_codes + 10, block_size=h * w, n_layer=4, n_head=4, n_embd=128
    )
    meta = TransformerMeta(gpt_cfg, vq.n_codes, 10, (h, w))
    gpt = GPT(gpt_cfg)
    print(f"stage 2: GPT {sum(p.numel() for p in gpt.parameters()) / 1e3:.0f}k params")
    t0 = time.perf_counter()
    gpt_train = TransformerTrainConfig(steps=args.gpt_steps, batch_size=128, lr=1e-3, log_every=300)
    train_transformer(gpt, meta, codes, y, gpt_train, callback=log)
    t_gpt = time.perf_counter() - t0
    save_transformer(args.out, gpt, meta)

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
