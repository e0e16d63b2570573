"""Training losses: each objective equals its textbook form computed by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from genmodels.diffusion.denoisers import DiscreteDenoiser, FlowDenoiser, KarrasDenoiser
from genmodels.diffusion.losses import ddpm_loss, edm_loss, flow_matching_loss
from genmodels.diffusion.schedules import make_alphas_cumprod


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x, t, **cond):
        return torch.tanh(self.conv(x)) + 1e-3 * t.float()[:, None, None, None]


def _draws(seed: int, b: int, shape, table: torch.Tensor):
    """Replays the generator the way DiffusionLoss consumes it: t, then noise."""
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(0, len(table), (b,), generator=g)
    noise = torch.randn(shape, generator=g)
    return t, noise


@pytest.mark.parametrize("objective", ["eps", "v", "x0"])
def test_ddpm_objectives_match_hand_computation(objective: str) -> None:
    ac = make_alphas_cumprod().float()
    net = Net()
    den = DiscreteDenoiser(net, ac, prediction=objective)
    x0 = torch.randn(4, 3, 8, 8)
    loss = ddpm_loss(den.sigmas, objective, generator=torch.Generator().manual_seed(1))
    got = loss(den, x0, {})
    t, noise = _draws(1, 4, x0.shape, den.sigmas)
    a = ac[t].sqrt()[:, None, None, None]
    s = (1 - ac[t]).sqrt()[:, None, None, None]
    x_t = a * x0 + s * noise  # Ho et al. 2020, eq. 4
    target = {"eps": noise, "v": a * noise - s * x0, "x0": x0}[objective]  # Salimans & Ho v
    expect = ((net(x_t, t) - target) ** 2).flatten(1).mean(1)
    torch.testing.assert_close(got, expect, rtol=2e-4, atol=1e-6)


def test_min_snr_gamma() -> None:
    ac = make_alphas_cumprod().float()
    net = Net()
    den = DiscreteDenoiser(net, ac, prediction="eps")
    x0 = torch.randn(6, 3, 8, 8)
    got = ddpm_loss(
        den.sigmas, "eps", min_snr_gamma=5.0, generator=torch.Generator().manual_seed(3)
    )(den, x0)
    t, noise = _draws(3, 6, x0.shape, den.sigmas)
    snr = ac[t] / (1 - ac[t])
    a, s = ac[t].sqrt()[:, None, None, None], (1 - ac[t]).sqrt()[:, None, None, None]
    mse = ((net(a * x0 + s * noise, t) - noise) ** 2).flatten(1).mean(1)
    expect = mse * torch.minimum(snr, torch.tensor(5.0)) / snr  # Hang et al. 2023, eps form
    torch.testing.assert_close(got, expect, rtol=2e-4, atol=1e-6)


def test_edm_loss() -> None:
    net = Net()
    den = KarrasDenoiser(net, sigma_data=0.5)
    x0 = torch.randn(4, 3, 8, 8)
    got = edm_loss(generator=torch.Generator().manual_seed(5))(den, x0)
    g = torch.Generator().manual_seed(5)
    sigma = (torch.randn(4, generator=g) * 1.2 - 1.2).exp()
    noise = torch.randn(x0.shape, generator=g)
    s = sigma[:, None, None, None]
    lam = (sigma**2 + 0.25) / (sigma * 0.5) ** 2  # EDM eq. 8 weighting
    expect = lam * ((den(x0 + s * noise, sigma) - x0) ** 2).flatten(1).mean(1)
    torch.testing.assert_close(got, expect)


def test_flow_matching_loss_is_velocity_mse() -> None:
    net = Net()
    den = FlowDenoiser(net)
    x0 = torch.randn(4, 3, 8, 8)
    got = flow_matching_loss("uniform", generator=torch.Generator().manual_seed(7))(den, x0)
    g = torch.Generator().manual_seed(7)
    t = torch.rand(4, generator=g).clamp(1e-4, 0.999)
    noise = torch.randn(x0.shape, generator=g)
    tt = t[:, None, None, None]
    x_t = (1 - tt) * x0 + tt * noise
    expect = ((net(x_t, t * 1000) - (noise - x0)) ** 2).flatten(1).mean(1)
    torch.testing.assert_close(got, expect, rtol=1e-4, atol=1e-5)


def test_offset_noise_and_bad_input() -> None:
    den = DiscreteDenoiser(Net(), make_alphas_cumprod())
    x0 = torch.zeros(2, 3, 8, 8)
    loss = ddpm_loss(den.sigmas, "x0", offset_noise=0.1)
    assert loss(den, x0).shape == (2,)
    with pytest.raises(ValueError, match="unknown objective"):
        ddpm_loss(den.sigmas, "score")
    with pytest.raises(ValueError, match="min_snr_gamma"):
        ddpm_loss(den.sigmas, min_snr_gamma=0)
    with pytest.raises(ValueError, match="batched"):
        loss(den, torch.zeros(3))
