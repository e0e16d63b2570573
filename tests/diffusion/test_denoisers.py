"""Denoisers: parity with k-diffusion's CompVis wrappers, EDM/flow algebra, bad input."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from genmodels.diffusion.denoisers import DiscreteDenoiser, FlowDenoiser, KarrasDenoiser
from genmodels.diffusion.schedules import make_alphas_cumprod
from tests._refs import k_diffusion


class TinyNet(nn.Module):
    """A small conv net that depends on t, standing in for a UNet."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.emb = nn.Linear(1, 3)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        e = self.emb(t.float()[:, None] / 1000)[:, :, None, None]
        return cond[:, None, None, None] * torch.tanh(self.conv(x) + e)


class _CompVisModel(nn.Module):
    """k-diffusion expects an ldm-style model: apply_model(x, t, cond) and alphas_cumprod."""

    def __init__(self, net: nn.Module, alphas_cumprod: torch.Tensor) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("alphas_cumprod", alphas_cumprod)

    def apply_model(self, x, t, cond):
        return self.net(x, t, cond)


@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("quantize", [False, True])
def test_discrete_matches_k_diffusion(prediction: str, quantize: bool) -> None:
    K = k_diffusion().external
    ac = make_alphas_cumprod().float()
    net = TinyNet()
    ours = DiscreteDenoiser(net, ac, prediction, quantize=quantize)
    cls = K.CompVisDenoiser if prediction == "eps" else K.CompVisVDenoiser
    ref = cls(_CompVisModel(net, ac), quantize=quantize)
    x = torch.randn(4, 3, 8, 8) * 3
    sigma = torch.tensor([14.6, 3.3, 0.5, 0.0292])
    c = torch.tensor([0.7, 1.0, 1.3, 0.5])
    torch.testing.assert_close(ours(x, sigma, cond=c), ref(x, sigma, cond=c), rtol=1e-5, atol=1e-6)
    for s in [0.03, 0.1, 1.0, 7.0, 14.0]:
        st = torch.tensor([s])
        torch.testing.assert_close(ours.sigma_to_t(st).float(), ref.sigma_to_t(st).float())
    t = torch.tensor([0.0, 10.5, 500.25, 999.0])
    torch.testing.assert_close(ours.t_to_sigma(t), ref.t_to_sigma(t))


def test_discrete_exact_timesteps_on_grid() -> None:
    den = DiscreteDenoiser(nn.Identity(), make_alphas_cumprod())
    t = torch.arange(1000)
    assert torch.equal(den.sigma_to_t(den.sigmas[t]), t.float())


def test_x0_prediction_and_scalar_sigma() -> None:
    seen = {}

    def net(x, t):
        seen["x"], seen["t"] = x, t
        return torch.zeros_like(x)

    den = DiscreteDenoiser(net, make_alphas_cumprod(), "x0")
    x = torch.randn(2, 3, 4, 4)
    assert torch.equal(den(x, 1.0), torch.zeros_like(x))
    torch.testing.assert_close(seen["x"], x / 2**0.5)
    assert seen["t"].shape == (2,)


def test_eps_denoiser_recovers_x0_with_oracle() -> None:
    """A network that returns the true eps makes the denoiser return x0 exactly."""
    ac = make_alphas_cumprod()
    x0, noise = torch.randn(3, 3, 4, 4), torch.randn(3, 3, 4, 4)
    sigma = torch.tensor([0.1, 1.0, 10.0])
    x = x0 + sigma[:, None, None, None] * noise
    for prediction in ("eps", "v"):

        def oracle(x_in, t, prediction=prediction):
            a = (1 + sigma**2) ** -0.5
            a, b = a[:, None, None, None], (sigma * a)[:, None, None, None]
            return noise if prediction == "eps" else a * noise - b * x0

        den = DiscreteDenoiser(oracle, ac, prediction)
        torch.testing.assert_close(den(x, sigma), x0, rtol=1e-5, atol=1e-5)


def test_karras_preconditioning() -> None:
    """EDM Table 1: c_skip, c_out, c_in, c_noise; an oracle F recovers x0."""
    sd = 0.5
    x0, noise = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    sigma = torch.tensor([0.02, 20.0])
    s = sigma[:, None, None, None]
    x = x0 + s * noise
    c_skip, c_out = sd**2 / (s**2 + sd**2), s * sd / (s**2 + sd**2) ** 0.5

    def oracle(x_in, c_noise):
        torch.testing.assert_close(x_in, x / (s**2 + sd**2) ** 0.5)
        torch.testing.assert_close(c_noise, sigma.log() / 4)
        return (x0 - c_skip * x) / c_out  # the F that makes D exact

    den = KarrasDenoiser(oracle, sigma_data=sd)
    torch.testing.assert_close(den(x, sigma), x0, rtol=1e-5, atol=1e-5)


def test_flow_denoiser_euler_equals_flow_euler() -> None:
    """Euler on the VE-form flow denoiser == Euler on the flow ODE dx/dt = v in t."""
    torch.manual_seed(0)
    w = torch.randn(3, 3)

    def velocity(x_t, t_scaled):
        return torch.einsum("ij,bjhw->bihw", w, x_t) * (t_scaled / 1000)[:, None, None, None]

    den = FlowDenoiser(velocity)
    ts = torch.tensor([0.9, 0.6, 0.3, 0.1])
    x_t = torch.randn(2, 3, 4, 4)
    ref = x_t.clone()
    for t, t_next in zip(ts[:-1], ts[1:]):
        ref = ref + (t_next - t) * velocity(ref, torch.full((2,), float(t)) * 1000)
    sigmas = ts / (1 - ts)
    x = x_t / (1 - ts[0])
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        d = (x - den(x, s.expand(2))) / s
        x = x + d * (s_next - s)
    torch.testing.assert_close(x * (1 - ts[-1]), ref, rtol=1e-5, atol=1e-5)
    assert den.sigma_max == pytest.approx(0.999 / 0.001, rel=1e-4)


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="unknown prediction 'noise'"):
        DiscreteDenoiser(nn.Identity(), make_alphas_cumprod(), "noise")
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        DiscreteDenoiser(nn.Identity(), torch.tensor([1.0, 0.5]))
    den = DiscreteDenoiser(nn.Identity(), make_alphas_cumprod())
    with pytest.raises(ValueError, match=r"sigma must have shape \(2,\)"):
        den(torch.randn(2, 3), torch.ones(3))
    with pytest.raises(ValueError):
        KarrasDenoiser(nn.Identity(), sigma_data=0)
