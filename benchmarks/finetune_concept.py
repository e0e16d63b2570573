"""Quality bar of ``task: finetune``: teach a base model we trained a concept absent from its data.

    python benchmarks/finetune_concept.py [--out runs/finetune-concept] [--base-steps 2000]
        [--lora-steps 1000] [--full-steps 800] [--per-class 20] [--concept-per-class 10]
        [--rank 4] [--lora-lr 2e-3] [--full-lr 3e-4] [--reuse-base]

1. Data: the built-in digits (8x8) upscaled to 16x16 RGB PNGs captioned "a handwritten digit
   seven"; the concept set: ``--concept-per-class`` digits per class rotated 180 degrees and
   captioned "a handwritten digit seven upside down", plus as many upright ones with their plain
   captions (kohya-style regularisation images, so prompts without the trigger stay as they were).
2. Base model, trained by us: a KL autoencoder (``task: autoencoder``, the ``tiny`` preset made
   f2) on the upright images, then a tiny SD 1.x-architecture checkpoint (that VAE, a small UNet, a
   frozen random-weight tiny CLIP text encoder) written as an LDM single file, then trained from
   random UNet weights on the upright digits with ``task: finetune``, ``train: full``.
3. The concept: ``task: finetune`` on the concept set, once with LoRA and once full.
4. Judges, trained on real digits (never on generated images): the digits classifier
   (``evaluation/digits_classifier.py``) for the class, and an MLP telling upright from
   upside-down real digits (its held-out accuracy printed: 0, 1 and 8 are nearly symmetric, which
   caps what any judge can see). For "... upside down" prompts a sample shows the concept when
   the orientation judge says so; its class is judged on the sample turned back upright.

Targets (issue 14): base ≤ 10% concept on trigger prompts; LoRA / full ≥ 90% concept with class
accuracy ≥ 90%; plain prompts within 2 points of the base's class accuracy; LoRA file ≤ 5% of
the UNet. The figures and times are printed and written to ``<out>/report.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from genmodels.checkpoints.convert import save_checkpoint
from genmodels.checkpoints.detect import ModelSpec
from genmodels.checkpoints.vae import load_vae
from genmodels.configs.unet import UNetConfig
from genmodels.data.digits import DIGITS_MAX, load_digits_arrays, load_digits_tensor, to_native
from genmodels.evaluation.digits_classifier import DigitsClassifier
from genmodels.models.text.encoders import TextEncoder
from genmodels.models.unet import UNetModel
from genmodels.pipelines.latent_diffusion import LatentDiffusionPipeline
from genmodels.pipelines.loading import load_pipeline
from genmodels.training.autoencoder import train_autoencoder
from genmodels.training.finetune import FinetuneTrainer
from genmodels.training.finetune_config import LoRAConfig
from genmodels.training.finetune_export import read_lora_file
from genmodels.training.lora import build_lora_network, load_kohya_weights
from genmodels.training.tasks import build_config

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
SIZE = 16  # px: the 8x8 digits upscaled 2x; an f2 VAE gives 8x8x4 latents
UNET = UNetConfig(
    in_channels=4, out_channels=4, model_channels=64, channel_mult=(1, 2), num_res_blocks=2,
    attention_resolutions=(1, 2), num_head_channels=32, context_dim=32,
)  # fmt: skip


def caption(label: int, upside_down: bool) -> str:
    return f"a handwritten digit {NAMES[label]}" + (" upside down" if upside_down else "")


def write_images(folder: Path, images: torch.Tensor, labels: torch.Tensor, flip: bool) -> None:
    """(N, 1, S, S) in [-1, 1] -> RGB PNGs with .txt captions; ``flip``: rotated 180 degrees."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, (x, y) in enumerate(zip(images, labels.tolist())):
        x = torch.rot90(x, 2, (-2, -1)) if flip else x
        arr = ((x[0].numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
        Image.fromarray(np.stack([arr] * 3, -1)).save(folder / f"{i:05d}.png")
        (folder / f"{i:05d}.txt").write_text(caption(y, flip), encoding="utf-8")


def make_data(out: Path, concept_per_class: int, seed: int) -> tuple[Path, Path]:
    images, labels = load_digits_tensor(SIZE)
    rng = np.random.default_rng(seed)
    write_images(out / "data" / "base", images, labels, flip=False)
    picks = np.concatenate([rng.choice(np.flatnonzero(labels.numpy() == c), 2 * concept_per_class,
                                       replace=False) for c in range(10)])  # fmt: skip
    concept, regular = (
        picks.reshape(10, 2, -1)[:, 0].ravel(),
        picks.reshape(10, 2, -1)[:, 1].ravel(),
    )
    write_images(out / "data" / "concept" / "upside", images[concept], labels[concept], True)
    write_images(out / "data" / "concept" / "upright", images[regular], labels[regular], False)
    return out / "data" / "base", out / "data" / "concept"


def base_checkpoint(out: Path, images: Path, ae_steps: int, seed: int) -> Path:
    """The VAE (trained), a random UNet and a random tiny CLIP as one SD 1.x LDM file."""
    ae = build_config("autoencoder", {
        "model": {"preset": "tiny", "ch_mult": [1, 2], "resolution": SIZE},
        "data": {"dataset": "folder", "path": str(images), "size": SIZE, "batch_size": 32},
        "steps": ae_steps, "seed": seed, "out_dir": str(out / "ae"), "progress": False,
        "log_every": 100})  # fmt: skip
    train_autoencoder(ae, overwrite=True)
    vae = load_vae(out / "ae")
    torch.manual_seed(seed)
    unet, text = UNetModel(UNET), TextEncoder("tiny-sd1")
    sd = {f"model.diffusion_model.{k}": v for k, v in unet.state_dict().items()}
    sd |= {f"first_stage_model.{k}": v for k, v in vae.state_dict().items()}
    sd |= {f"cond_stage_model.transformer.{k}": v
           for k, v in text.embedders[0].model.state_dict().items()}  # fmt: skip
    spec = ModelSpec("sd1", UNET, vae.config, text.config, "eps", "metadata")
    save_checkpoint(sd, spec, out / "init.safetensors")
    return out / "init.safetensors"


def finetune(init: Path, data: Path, out: Path, train: str, steps: int, lr: float,
             seed: int, rank: int = 4) -> tuple[Path, float]:  # fmt: skip
    cfg = build_config("finetune", {
        "init": str(init), "train": train, "data": {"path": str(data), "size": SIZE,
                                                    "batch_size": 32},
        "buckets": {"enabled": False}, "captions": {"dropout": 0.1}, "frozen_precision": "fp32",
        "lora": {"rank": rank}, "optim": {"lr": lr, "schedule": "cosine", "warmup_steps": 50},
        "ema": {"enabled": train == "full" and steps > 1000}, "steps": steps, "seed": seed,
        "out_dir": str(out), "progress": False, "log_every": max(1, steps // 5),
        "ckpt_minutes": 0})  # fmt: skip
    t0 = time.perf_counter()
    FinetuneTrainer(cfg, overwrite=True).fit()
    return out / "model.safetensors", time.perf_counter() - t0


class OrientationJudge:
    """Upright (0) vs upside-down (1) real digits: an MLP on the 8x8 pixels."""

    def __init__(self, seed: int = 0) -> None:
        from sklearn.model_selection import train_test_split
        from sklearn.neural_network import MLPClassifier

        images, _ = load_digits_arrays()
        x = torch.cat([images, torch.rot90(images, 2, (-2, -1))]).flatten(1).numpy() / DIGITS_MAX
        y = np.r_[np.zeros(len(images)), np.ones(len(images))]
        xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.25, random_state=seed, stratify=y)
        self.clf = MLPClassifier((128,), max_iter=400, random_state=seed).fit(xtr, ytr)
        self.test_accuracy = float(self.clf.score(xte, yte))

    def upside_down(self, images: torch.Tensor) -> np.ndarray:
        return self.clf.predict(to_native(images).numpy() / DIGITS_MAX) == 1


@torch.no_grad()
def samples(pipe: LatentDiffusionPipeline, upside_down: bool, per_class: int, seed: int
            ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(10 * per_class, 1, S, S) grey images in [-1, 1] and their labels."""
    out = []
    for label in range(10):
        result = pipe.txt2img(
            caption(label, upside_down),
            width=SIZE,
            height=SIZE,
            steps=20,
            cfg_scale=3.0,
            seed=seed + 1000 * label,
            batch_size=per_class,
        )
        out.append(result.pixels.mean(1, keepdim=True) * 2 - 1)  # fmt: skip
    return torch.cat(out), torch.arange(10).repeat_interleave(per_class)


def judge(pipe: LatentDiffusionPipeline, digits: DigitsClassifier, orient: OrientationJudge,
          per_class: int, seed: int) -> dict[str, float]:  # fmt: skip
    plain, labels = samples(pipe, False, per_class, seed)
    trig, _ = samples(pipe, True, per_class, seed)
    shown = orient.upside_down(trig)
    turned = torch.rot90(trig, 2, (-2, -1))
    return {
        "plain_class_acc": digits.evaluate(plain, labels).accuracy,
        "plain_concept": float(orient.upside_down(plain).mean()),
        "trigger_concept": float(shown.mean()),
        "trigger_class_acc": digits.evaluate(turned, labels).accuracy,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default="runs/finetune-concept")
    p.add_argument("--ae-steps", type=int, default=300)
    p.add_argument("--base-steps", type=int, default=2000)
    p.add_argument("--lora-steps", type=int, default=1000)
    p.add_argument("--full-steps", type=int, default=800)
    p.add_argument("--concept-per-class", type=int, default=10)
    p.add_argument("--per-class", type=int, default=20, help="samples per digit and prompt")
    p.add_argument("--rank", type=int, default=4, help="LoRA rank")
    p.add_argument("--lora-lr", type=float, default=2e-3)
    p.add_argument("--full-lr", type=float, default=3e-4)
    p.add_argument("--reuse-base", action="store_true", help="keep <out>/base if it exists")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    out, t0 = Path(args.out), time.perf_counter()
    base, t_base = out / "base" / "model.safetensors", 0.0
    concept_data = out / "data" / "concept"
    if not (args.reuse_base and base.is_file()):
        base_data, concept_data = make_data(out, args.concept_per_class, args.seed)
        init = base_checkpoint(out, base_data, args.ae_steps, args.seed)
        base, t_base = finetune(init, base_data, out / "base", "full", args.base_steps, 1e-3,
                                args.seed)  # fmt: skip
    lora, t_lora = finetune(base, concept_data, out / "lora", "lora", args.lora_steps,
                            args.lora_lr, args.seed, args.rank)  # fmt: skip
    full, t_full = finetune(base, concept_data, out / "full", "full", args.full_steps,
                            args.full_lr, args.seed)  # fmt: skip
    digits, orient = DigitsClassifier(size=SIZE), OrientationJudge()
    report: dict[str, object] = {
        "judges": {"digits_test_acc": digits.test_accuracy, "orientation_test_acc":
                   orient.test_accuracy},
        "times_s": {"base": t_base, "lora": t_lora, "full": t_full},
    }  # fmt: skip
    pipe = load_pipeline(base)
    report["base"] = judge(pipe, digits, orient, args.per_class, args.seed)
    net = build_lora_network(pipe.unet, None, "sd1", LoRAConfig(rank=args.rank))
    load_kohya_weights(net, read_lora_file(lora), str(lora), "sd1")
    net.attach()
    report["lora"] = judge(pipe, digits, orient, args.per_class, args.seed)
    unet_bytes = sum(t.numel() * 2 for t in pipe.unet.state_dict().values())  # as fp16
    report["lora_file_fraction_of_fp16_unet"] = lora.stat().st_size / unet_bytes
    report["full"] = judge(load_pipeline(full), digits, orient, args.per_class, args.seed)
    report["total_s"] = time.perf_counter() - t0
    (out / "report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
