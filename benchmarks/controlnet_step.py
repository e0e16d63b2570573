"""ControlNet cost per sampling step: SD 1.5 UNet alone vs with one and two ControlNet units.

SD 1.5 architecture with random weights (the ControlNet is the SD 1.5 ControlNet: the UNet's
encoder half plus the hint encoder), a classifier-free-guidance batch of 2 (cond + uncond, as
the pipeline runs it), ``--size`` latent pixels (32: a 256x256 image). Timed interleaved, best
of ``--steps`` after a warm-up; compare the ratios, absolute times move with the machine's load.

    python benchmarks/controlnet_step.py [--size 32] [--steps 3] [--fp32] [--flops-only]

First the machine-independent figure: the FLOPs of one ControlNet against the UNet's
(``torch.utils.flop_counter`` on the meta device) for SD 1.5 at 64x64 and SDXL at 128x128
latents; then the timings.
"""

from __future__ import annotations

import argparse

import torch
from torch.utils.flop_counter import FlopCounterMode
from unet_speed import interleaved_best

from genmodels.configs.controlnet import ControlNetConfig
from genmodels.configs.unet import get_unet_config
from genmodels.models.controlnet import ControlledUNet, ControlNetModel
from genmodels.models.unet import UNetModel
from genmodels.pipelines.devices import cpu_supports_bf16


def _random(factory, config, dtype: torch.dtype) -> torch.nn.Module:
    """Built on the meta device, then N(0, 0.02) weights (no init cost; the zero convs get
    weights too, as a trained ControlNet has)."""
    with torch.device("meta"):
        model = factory(config)
    model = model.to_empty(device="cpu").to(dtype=dtype, memory_format=torch.channels_last)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    return model.eval()


def flops() -> None:
    """ControlNet / UNet FLOPs per step (batch 2: cond + uncond), counted on the meta device."""
    for preset, ctx, s in (("sd1", 768, 64), ("sdxl-base", 2048, 128)):
        c = get_unet_config(preset)
        with torch.device("meta"):
            unet, cn = UNetModel(c), ControlNetModel(ControlNetConfig(c))
            x, t = torch.randn(2, 4, s, s), torch.full((2,), 500.0)
            context, hint = torch.randn(2, 77, ctx), torch.randn(2, 3, 8 * s, 8 * s)
            y = torch.randn(2, c.adm_in_channels) if c.adm_in_channels else None
        with torch.no_grad(), FlopCounterMode(display=False) as f_unet:
            unet(x, t, context=context, y=y)
        with torch.no_grad(), FlopCounterMode(display=False) as f_cn:
            cn(x, hint, t, context=context, y=y)
        a, b = f_unet.get_total_flops(), f_cn.get_total_flops()
        n_cn = sum(p.numel() for p in cn.parameters()) / 1e6
        print(
            f"{preset} {s}x{s} latent: UNet {a / 1e12:.2f} TFLOP, ControlNet ({n_cn:.0f}M "
            f"parameters) {b / 1e12:.2f} TFLOP = +{b / a:.1%} per unit"
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=32, help="latent size (image: 8x)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--fp32", action="store_true")
    ap.add_argument("--flops-only", action="store_true")
    args = ap.parse_args()
    flops()
    if args.flops_only:
        return
    dtype = torch.float32 if args.fp32 or not cpu_supports_bf16() else torch.bfloat16
    torch.manual_seed(0)
    config = get_unet_config("sd1")
    unet, cn = (
        _random(UNetModel, config, dtype),
        _random(ControlNetModel, ControlNetConfig(config), dtype),
    )
    b, s = 2, args.size
    cl = torch.channels_last  # the CPU's best layout for bf16 convs (as benchmarks/unet_speed.py)
    x = torch.randn(b, 4, s, s).to(dtype).contiguous(memory_format=cl)
    t = torch.tensor([500.0, 500.0])
    context = torch.randn(b, 77, 768)
    hint = torch.rand(1, 3, 8 * s, 8 * s).to(dtype).contiguous(memory_format=cl)
    one = ControlledUNet(unet, [cn], [hint])
    two = ControlledUNet(unet, [cn, cn], [hint, hint])
    with torch.no_grad():
        times = interleaved_best(
            [
                lambda: unet(x, t, context=context),
                lambda: one(x, t, [1.0], context=context),
                lambda: two(x, t, [1.0, 0.5], context=context),
                lambda: one(x, t, [0.0], context=context),
            ],
            args.steps,
        )
    base = times[0]
    print(
        f"SD 1.5 UNet step, batch {b}, latent {s}x{s}, {dtype}, {torch.get_num_threads()} threads"
    )
    for name, sec in zip(("no control", "1 unit", "2 units", "1 unit, weight 0"), times):
        print(f"  {name:<18} {sec:7.3f} s/step  x{sec / base:.2f}")


if __name__ == "__main__":
    main()
