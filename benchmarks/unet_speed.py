"""UNet speed: ours vs diffusers, SD 1.5 architecture, 64x64 latent (512x512 image), batch 1.

Both networks hold the same random weights (ours converted to diffusers' layout by our converter).
Configs: bf16 weights end to end; bf16 + channels_last (diffusers' best CPU layout, and ours);
the same with our oneDNN fast paths switched off (to show what they pay); fp32 with ``--fp32``.
Ours and diffusers are timed in one process, interleaved step by step, so that load from other
processes hits both alike: compare the ratios, the absolute times move with the machine's load.
Also prints the matmul floor: the step's FLOPs (counted by ``torch.utils.flop_counter``) at the
GFLOP/s of a 2048^3 matmul in the same dtype, and the fraction of it that our step reaches.

    python benchmarks/unet_speed.py [--steps 2] [--size 64] [--fp32]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from genmodels.checkpoints.diffusers_unet import ldm_to_diffusers_unet
from genmodels.configs.unet import get_unet_config
from genmodels.models.unet import UNetModel
from genmodels.nn.fast import set_fast_paths


def interleaved_best(fns: list[Callable[[], object]], steps: int) -> list[float]:
    """Best-of-``steps`` seconds per call for each fn, timed round-robin after one warm-up."""
    for fn in fns:
        fn()  # warm-up (oneDNN primitive creation, allocator)
    best = [float("inf")] * len(fns)
    for _ in range(steps):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - start)
    return best


def matmul_gflops(dtype: torch.dtype, n: int = 2048, reps: int = 3) -> float:
    """GFLOP/s of an n^3 matmul in ``dtype`` (the floor's yardstick), best of ``reps``."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    (s,) = interleaved_best([lambda: a @ b], reps)
    return 2 * n**3 / s / 1e9


def build_pair(size: int) -> tuple[UNetModel, torch.nn.Module]:
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
        sample_size=size,
    ).eval()
    ref.load_state_dict(ldm_to_diffusers_unet(ours.state_dict(), config), strict=True)
    return ours, ref


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2, help="timed steps per config (best of)")
    parser.add_argument("--size", type=int, default=64, help="latent height and width")
    parser.add_argument("--fp32", action="store_true", help="also time fp32")
    args = parser.parse_args()

    ours, ref = build_pair(args.size)
    x = torch.randn(1, 4, args.size, args.size)
    t = torch.tensor([500.0])
    ctx = torch.randn(1, 77, 768)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, latent {tuple(x.shape)}")

    configs = [("bf16", torch.bfloat16, False, True)]
    configs += [("bf16 channels_last", torch.bfloat16, True, True)]
    configs += [("bf16 channels_last, fast paths off", torch.bfloat16, True, False)]
    if args.fp32:
        configs.insert(0, ("fp32", torch.float32, False, True))
    best: dict[torch.dtype, float] = {}
    for name, dtype, channels_last, fast in configs:
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        ours.to(dtype=dtype, memory_format=fmt)
        ref.to(dtype=dtype, memory_format=fmt)
        xi, ci = x.to(dtype).contiguous(memory_format=fmt), ctx.to(dtype)
        set_fast_paths(fast)
        with torch.inference_mode():
            a, b = ours(xi, t, ci).float(), ref(xi, t, ci).sample.float()
            rel = ((a - b).norm() / b.norm()).item()
            s_ours, s_ref = interleaved_best(
                [lambda xi=xi, ci=ci: ours(xi, t, ci), lambda xi=xi, ci=ci: ref(xi, t, ci)],
                args.steps,
            )
        best[dtype] = min(best.get(dtype, float("inf")), s_ref)
        print(
            f"{name:36s} ours {s_ours:7.3f} s/step  diffusers {s_ref:7.3f} s/step  "
            f"speed-up {s_ref / s_ours:5.2f}x  rel. RMS diff {rel:.2e}",
            flush=True,
        )
    set_fast_paths(True)

    ours.to(dtype=torch.bfloat16, memory_format=torch.channels_last)
    xi = x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        ours(xi, t, ctx.to(torch.bfloat16))
    gflop = counter.get_total_flops() / 1e9
    gflops = matmul_gflops(torch.bfloat16)
    (s_ours,) = interleaved_best([lambda: ours(xi, t, ctx.to(torch.bfloat16))], 1)
    floor = gflop / gflops
    print(
        f"bf16 step: {gflop:.0f} GFLOP; 2048^3 bf16 matmul {gflops:.0f} GFLOP/s -> floor "
        f"{floor:.2f} s/step; ours {s_ours:.2f} s/step = {100 * floor / s_ours:.0f}% of floor; "
        f"best diffusers bf16 {best[torch.bfloat16]:.2f} s/step"
    )


if __name__ == "__main__":
    main()
