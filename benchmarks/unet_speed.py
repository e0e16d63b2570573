"""UNet speed: ours vs diffusers, SD 1.5 architecture, 64x64 latent (512x512 image), batch 1.

Both networks hold the same random weights (ours converted to diffusers' layout by our converter).
Configs: fp32; bf16 weights end to end; bf16 + channels_last (diffusers' best CPU layout, and ours).
Prints seconds per denoising step (one UNet call with a 77-token context) and ours/diffusers.

    python benchmarks/unet_speed.py [--steps 2] [--size 64]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from genmodels.checkpoints.diffusers_unet import ldm_to_diffusers_unet
from genmodels.configs.unet import get_unet_config
from genmodels.models.unet import UNetModel


def _seconds_per_step(fn: Callable[[], torch.Tensor], steps: int) -> float:
    fn()  # warm-up (oneDNN primitive creation)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2, help="timed steps per config")
    parser.add_argument("--size", type=int, default=64, help="latent height and width")
    args = parser.parse_args()

    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    config = get_unet_config("sd1")
    ours = UNetModel(config).eval()
    with torch.no_grad():
        for p in ours.parameters():  # random weights everywhere (no zero-initialised layers)
            p.normal_(0.0, 0.02)
    ref = UNet2DConditionModel(
        block_out_channels=(320, 640, 1280, 1280),
        attention_head_dim=8,
        cross_attention_dim=768,
        sample_size=args.size,
    ).eval()
    ref.load_state_dict(ldm_to_diffusers_unet(ours.state_dict(), config), strict=True)

    x = torch.randn(1, 4, args.size, args.size)
    t = torch.tensor([500.0])
    ctx = torch.randn(1, 77, 768)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, latent {tuple(x.shape)}")

    results: dict[str, tuple[float, float]] = {}
    for name, dtype, channels_last in (
        ("fp32", torch.float32, False),
        ("bf16", torch.bfloat16, False),
        ("bf16 channels_last", torch.bfloat16, True),
    ):
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        ours.to(dtype=dtype, memory_format=fmt)
        ref.to(dtype=dtype, memory_format=fmt)
        xi, ci = x.to(dtype).contiguous(memory_format=fmt), ctx.to(dtype)
        with torch.inference_mode():
            a = ours(xi, t, ci)
            b = ref(xi, t, ci).sample
            diff = (a.float() - b.float()).abs().max().item()
            s_ours = _seconds_per_step(lambda xi=xi, ci=ci: ours(xi, t, ci), args.steps)
            s_ref = _seconds_per_step(lambda xi=xi, ci=ci: ref(xi, t, ci).sample, args.steps)
        results[name] = (s_ours, s_ref)
        print(
            f"{name:20s} ours {s_ours:7.3f} s/step  diffusers {s_ref:7.3f} s/step  "
            f"ratio {s_ours / s_ref:5.2f}  max|diff| {diff:.2e}",
            flush=True,
        )
    best_ref = min(r for _, r in results.values())
    best_ours = min(o for o, _ in results.values())
    print(f"best: ours {best_ours:.3f} s/step, diffusers {best_ref:.3f} s/step")


if __name__ == "__main__":
    main()
