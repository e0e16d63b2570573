"""Per-step overhead of each sampler beyond the model call.

The denoiser costs (almost) nothing (it returns its input), so the time per step is the
sampler's own work: tensor updates, sigma arithmetic, noise generation, Python. Target: < 1 ms
per step for a 4x64x64 latent, batch 1 (an SD 1.x 512x512 image).

    python benchmarks/sampler_overhead.py [--device cuda] [--steps 20] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch

from genmodels.diffusion.noise import SeededNoiseSampler
from genmodels.diffusion.samplers import SAMPLERS
from genmodels.diffusion.schedules import get_sigmas_karras

MINE = [
    "euler",
    "euler_ancestral",
    "heun",
    "dpm_2",
    "dpm_2_ancestral",
    "lms",
    "dpm_fast",
    "dpm_adaptive",
    "dpmpp_2s_ancestral",
    "dpmpp_sde",
    "dpmpp_2m",
    "dpmpp_2m_sde",
    "dpmpp_2m_sde_heun",
    "dpmpp_3m_sde",
]
BROWNIAN = {"dpmpp_sde", "dpmpp_2m_sde", "dpmpp_2m_sde_heun", "dpmpp_3m_sde"}


class IdentityDenoiser:
    """Returns x: the model call is free, what remains is the sampler's overhead."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_once(name: str, x: torch.Tensor, sigmas: torch.Tensor, noise: str) -> tuple[float, int]:
    """Seconds per step and number of steps for one run."""
    den = IdentityDenoiser()
    kwargs: dict = {"disable": True}
    if noise == "seeded":
        kwargs["noise_sampler"] = SeededNoiseSampler(x, 0)
    steps = len(sigmas) - 1
    _sync(x.device)
    start = time.perf_counter()
    if name == "dpm_fast":
        SAMPLERS[name](den, x, float(sigmas[-2]), float(sigmas[0]), steps, **kwargs)
    elif name == "dpm_adaptive":
        _, info = SAMPLERS[name](
            den, x, float(sigmas[-2]), float(sigmas[0]), return_info=True, **kwargs
        )
        steps = info["steps"]
    else:
        SAMPLERS[name](den, x, sigmas, **kwargs)
    _sync(x.device)
    return (time.perf_counter() - start) / steps, steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="CPU intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    x = torch.randn(1, 4, 64, 64, device=device) * 14.6
    sigmas = get_sigmas_karras(args.steps, 0.0292, 14.6, device=device)
    rows = []
    for name in MINE:
        for noise in ["default", "seeded"] if name in BROWNIAN else ["default"]:
            run_once(name, x, sigmas, noise)  # warm-up
            times = [run_once(name, x, sigmas, noise) for _ in range(args.repeats)]
            best, steps = min(times)
            rows.append((name, noise, steps, best * 1e3))
    print(
        f"device={device}  threads={args.threads}  latent={tuple(x.shape)}  "
        f"steps={args.steps}  best of {args.repeats}"
    )
    print(f"{'sampler':<20} {'noise':<8} {'steps':>5} {'ms/step':>8}")
    for name, noise, steps, ms in rows:
        flag = "" if ms < 1.0 else "  (> 1 ms)"
        print(f"{name:<20} {noise:<8} {steps:>5} {ms:>8.3f}{flag}")
    print("dpm_fast: steps = model evaluations (n); dpm_adaptive: attempted steps (3 calls each).")
    print("noise 'default' of the SDE samplers is a torchsde Brownian tree (k-diffusion's")
    print("default; its cost is torchsde's); 'seeded' is SeededNoiseSampler.")


if __name__ == "__main__":
    main()
