"""Speed of the SD VAE decoder at 512x512 (64x64 latent): genmodels vs diffusers, same weights.

Both models get the SD 1.x VAE architecture with the same random weights (diffusers' init,
converted to our layout by ``genmodels.checkpoints.diffusers_vae``). Prints seconds per decode
for fp32 and bf16 (bf16 weights, channels_last for both) and the speed-up diffusers / ours; the
two are timed alternately in one process so that load from other processes hits both alike.
On the CPU it also prints the matmul floor: the decode's FLOPs (``torch.utils.flop_counter``)
at the GFLOP/s of a 2048^3 bf16 matmul, and the fraction of it that our decode reaches.

    python benchmarks/vae_speed.py [--reps 1] [--size 64] [--device cpu] [--no-fp32]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from genmodels.checkpoints.diffusers_vae import diffusers_vae_to_ldm
from genmodels.configs.autoencoder import get_autoencoder_config
from genmodels.models.autoencoder_kl import AutoencoderKL


def build_pair() -> tuple[torch.nn.Module, AutoencoderKL]:
    from diffusers import AutoencoderKL as DiffusersAutoencoderKL

    torch.manual_seed(0)
    ref = DiffusersAutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        latent_channels=4,
        sample_size=512,
    ).eval()
    ours = AutoencoderKL(get_autoencoder_config("sd")).eval()
    ours.load_state_dict(diffusers_vae_to_ldm(ref.state_dict()), strict=True)
    return ref, ours


def time_pair(decodes: list, z: torch.Tensor, reps: int) -> tuple[list[float], list[torch.Tensor]]:
    """Best-of-``reps`` seconds per decode for each function, timed alternately."""
    sync = torch.cuda.synchronize if z.device.type == "cuda" else (lambda: None)
    best, outs = [float("inf")] * len(decodes), [z] * len(decodes)
    with torch.inference_mode():
        for decode in decodes:
            decode(z[..., :16, :16])  # warm-up: kernel selection, allocator
        for _ in range(reps):
            for i, decode in enumerate(decodes):
                sync()
                start = time.perf_counter()
                outs[i] = decode(z)
                sync()
                best[i] = min(best[i], time.perf_counter() - start)
    return best, outs


def floor_line(ours: AutoencoderKL, z: torch.Tensor, seconds: float) -> str:
    """The decode's FLOPs, the 2048^3 bf16 matmul rate here, and our share of that floor."""
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        ours.decode(z[..., :8, :8])  # FLOPs scale with the area: count a small latent
    gflop = counter.get_total_flops() / 1e9 * (z.shape[-2] * z.shape[-1]) / 64
    a, b = torch.randn(2048, 2048, dtype=z.dtype), torch.randn(2048, 2048, dtype=z.dtype)
    (mm,), _ = time_pair([lambda _: a @ b], z, 3)
    gflops = 2 * 2048**3 / mm / 1e9
    floor = gflop / gflops
    return (
        f"decode {gflop:.0f} GFLOP; 2048^3 matmul {gflops:.0f} GFLOP/s -> floor {floor:.2f} s; "
        f"ours {seconds:.2f} s = {100 * floor / seconds:.0f}% of floor"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--size", type=int, default=64, help="latent side (64 -> 512x512)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-fp32", action="store_true", help="time bf16 only")
    args = parser.parse_args()
    ref, ours = build_pair()
    z = torch.randn(1, 4, args.size, args.size, generator=torch.Generator().manual_seed(1))
    print(f"device {args.device}, threads {torch.get_num_threads()}, latent {tuple(z.shape)}")
    dtypes = (torch.bfloat16,) if args.no_fp32 else (torch.float32, torch.bfloat16)
    for dtype in dtypes:
        fmt = torch.channels_last if dtype == torch.bfloat16 else torch.contiguous_format
        zd = z.to(args.device, dtype).contiguous(memory_format=fmt)
        ref.to(args.device, dtype, memory_format=fmt)
        ours.to(args.device, dtype, memory_format=fmt)
        (t_ours, t_ref), (img, img_ref) = time_pair(
            [ours.decode, lambda x: ref.decode(x).sample], zd, args.reps
        )
        diff = (img.float() - img_ref.float()).abs().max().item()
        name = str(dtype).removeprefix("torch.")
        print(
            f"{name:9s} ours {t_ours:7.2f} s  diffusers {t_ref:7.2f} s  "
            f"speed-up {t_ref / t_ours:5.2f}x  max|diff| {diff:.2e}",
            flush=True,
        )
    if args.device == "cpu" and dtype == torch.bfloat16:
        print(floor_line(ours, zd, t_ours))


if __name__ == "__main__":
    main()
