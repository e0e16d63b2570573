"""Speed of the SD VAE decoder at 512x512 (64x64 latent): genmodels vs diffusers, same weights.

Both models get the SD 1.x VAE architecture with the same random weights (diffusers' init,
converted to our layout by ``genmodels.checkpoints.diffusers_vae``). Prints seconds per decode
for fp32 and bf16 (bf16 weights, channels_last for both) and the ratio ours / diffusers.

    python benchmarks/vae_speed.py [--reps 1] [--size 64] [--device cpu]
"""

from __future__ import annotations

import argparse
import time

import torch

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


def time_decode(decode, z: torch.Tensor, reps: int) -> tuple[float, torch.Tensor]:
    with torch.no_grad():
        decode(z[..., :16, :16])  # warm-up: kernel selection, allocator
        if z.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(reps):
            out = decode(z)
        if z.device.type == "cuda":
            torch.cuda.synchronize()
    return (time.perf_counter() - start) / reps, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--size", type=int, default=64, help="latent side (64 -> 512x512)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    ref, ours = build_pair()
    z = torch.randn(1, 4, args.size, args.size, generator=torch.Generator().manual_seed(1))
    print(f"device {args.device}, threads {torch.get_num_threads()}, latent {tuple(z.shape)}")
    for dtype in (torch.float32, torch.bfloat16):
        fmt = torch.channels_last if dtype == torch.bfloat16 else torch.contiguous_format
        zd = z.to(args.device, dtype).contiguous(memory_format=fmt)
        ref.to(args.device, dtype, memory_format=fmt)
        ours.to(args.device, dtype, memory_format=fmt)
        t_ref, img_ref = time_decode(lambda x: ref.decode(x).sample, zd, args.reps)
        t_ours, img = time_decode(ours.decode, zd, args.reps)
        diff = (img.float() - img_ref.float()).abs().max().item()
        name = str(dtype).removeprefix("torch.")
        print(
            f"{name:9s} ours {t_ours:7.2f} s  diffusers {t_ref:7.2f} s  "
            f"ratio {t_ours / t_ref:5.2f}  max|diff| {diff:.2e}"
        )


if __name__ == "__main__":
    main()
