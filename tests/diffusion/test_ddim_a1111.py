"""A1111's "DDIM" (stable-diffusion-webui >= 1.6, sd_samplers_timesteps) against a
variance-preserving reference written from its algorithm: timesteps
``clip(range(0, 1000, 1000 // steps) + 1, 0, 999)``, unit noise to start, ``len - 1`` DDIM
steps from the last timestep down to the first, a_prev = alphas_cumprod[previous timestep]."""

from __future__ import annotations

import pytest
import torch

from genmodels.diffusion.denoisers import DiscreteDenoiser
from genmodels.diffusion.noise import seeded_randn
from genmodels.diffusion.sampling import sample
from genmodels.diffusion.schedules import make_alphas_cumprod


def _eps_model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A smooth eps prediction depending on x and t (stands in for a UNet)."""
    return 0.3 * torch.tanh(x) + 0.05 * torch.sin(t.float() / 90)[:, None, None, None]


def _a1111_ddim(x: torch.Tensor, steps: int, alphas_cumprod: torch.Tensor, calls: list):
    ts = torch.clip(torch.arange(0, 1000, 1000 // steps) + 1, 0, 999)
    a = alphas_cumprod.double()
    for index in range(len(ts) - 1, 0, -1):
        t, t_prev = ts[index], ts[index - 1]
        calls.append(int(t))
        e = _eps_model(x, t.expand(x.shape[0])).double()
        pred_x0 = (x - (1 - a[t]).sqrt() * e) / a[t].sqrt()
        x = a[t_prev].sqrt() * pred_x0 + (1 - a[t_prev]).sqrt() * e
    return x.float()


@pytest.mark.parametrize("steps", [20, 30])
def test_matches_a1111_timestep_ddim(steps: int) -> None:
    ac = make_alphas_cumprod()
    denoiser = DiscreteDenoiser(_eps_model, ac, "eps")
    shape = (2, 4, 8, 8)
    calls: list[int] = []
    expected = _a1111_ddim(seeded_randn(shape, [5, 6]).double(), steps, ac, calls)
    seen: list[int] = []
    ours = sample(denoiser, shape, sampler="DDIM", steps=steps, seeds=[5, 6],
                  callback=lambda info: seen.append(info["i"]))  # fmt: skip
    assert len(seen) == len(calls) == len(range(0, 1000, 1000 // steps)) - 1  # 19 for 20 steps
    assert calls[0] == 1 + (len(calls)) * (1000 // steps) and calls[-1] == 1 + 1000 // steps
    torch.testing.assert_close(ours, expected, atol=2e-4, rtol=0)
    # our sigma-space DDIM ("ddim", ComfyUI) goes on to sigma 0: a visibly different result
    plain = sample(denoiser, shape, sampler="ddim", scheduler="ddim_uniform", steps=steps,
                   seeds=[5, 6])  # fmt: skip
    assert (plain - ours).abs().max() > 1e-2
