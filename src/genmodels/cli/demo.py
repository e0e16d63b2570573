"""``genmodels demo``: train class-conditional diffusion on the built-in digits and judge it.

Trains the ``digits-demo`` preset on this machine, samples ``--per-class`` images of every
digit with classifier-free guidance, writes a grid (one row per class) and reports the accuracy
of a scikit-learn classifier trained on real digits at recognising the intended class, and the
Fréchet distance in that classifier's feature space with the real-vs-real floor beside it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from genmodels.checkpoints.atomic import write_atomic
from genmodels.pipelines.trained import sample_labels
from genmodels.training.diffusion import Trainer
from genmodels.training.images import save_grid
from genmodels.training.tasks import build_config

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="train class-conditional diffusion on the built-in digits and report its quality",
        description=__doc__,
    )
    p.add_argument("--out", default="runs/digits-demo", help="output directory")
    p.add_argument("--steps", type=int, default=None, help="training steps (preset: 1200)")
    p.add_argument("--per-class", type=int, default=100, help="samples per digit (default 100)")
    p.add_argument("--sample-steps", type=int, default=None, help="sampler steps")
    p.add_argument("--guidance", type=float, default=None, help="CFG scale")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("overrides", nargs="*", help="config overrides key=value (e.g. optim.lr=1e-3)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    overrides = [f"out_dir={args.out}", f"seed={args.seed}", *args.overrides]
    if args.steps is not None:
        overrides.append(f"steps={args.steps}")
    if args.sample_steps is not None:
        overrides.append(f"sample_steps={args.sample_steps}")
    if args.guidance is not None:
        overrides.append(f"guidance_scale={args.guidance}")
    if args.per_class < 1:
        raise ValueError(f"--per-class must be >= 1, got {args.per_class}")
    cfg = build_config("diffusion", None, overrides, preset="digits-demo")

    trainer = Trainer(cfg, overwrite=True)  # a demo re-run replaces its own folder
    trainer.fit()
    t_train = time.perf_counter() - t0

    labels = torch.arange(10).repeat_interleave(args.per_class)  # (10 * per_class,)
    shape = (len(labels), *trainer.sample_shape)
    images = sample_labels(
        trainer.sampling_denoiser(), labels, shape, trainer.null, steps=cfg.sample_steps,
        guidance_scale=cfg.guidance_scale, seed=cfg.seed,
    )  # fmt: skip
    t_sample = time.perf_counter() - t0 - t_train
    out = Path(cfg.out_dir)
    # samples.png: the first 10 of each class (a row per class); samples_all.png: all of them
    first = images.view(10, args.per_class, *shape[1:])[:, :10].reshape(-1, *shape[1:])
    grid = save_grid(first, out / "samples.png", nrow=min(10, args.per_class), scale=4)
    save_grid(images, out / "samples_all.png", nrow=args.per_class, scale=2)

    from genmodels.evaluation.digits_classifier import DigitsClassifier

    report = DigitsClassifier(size=cfg.data.size, seed=cfg.seed).evaluate(images, labels)
    total = time.perf_counter() - t0
    figures = {
        "accuracy": report.accuracy,
        "fd": report.fd,
        "fd_real_vs_real": report.fd_real,
        "classifier_test_accuracy": report.classifier_test_accuracy,
        "train_s": t_train,
        "sample_s": t_sample,
        "total_s": total,
        "steps": cfg.steps,
        "samples": len(labels),
    }
    text = json.dumps(figures, indent=2)
    write_atomic(out / "report.json", lambda tmp: tmp.write_text(text))
    print(f"genmodels demo: {report}")
    print(
        f"train {t_train:.0f}s, sample {t_sample:.0f}s, total {total:.0f}s; grid: {grid}; "
        f"figures: {out / 'report.json'}"
    )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="genmodels")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args()
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
