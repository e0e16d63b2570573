"""Parity of every sampler with k-diffusion 0.1.1.post1.

Our sampler drives our ``DiscreteDenoiser``; k-diffusion's sampler drives its own
``DiscreteEpsDDPMDenoiser`` / ``DiscreteVDDPMDenoiser``; both wrap the same tiny random conv net.
Noise is made identical by seeding the global RNG the same way before each side (the default
noise samplers, and the default Brownian tree's seed, come from it) or by passing Brownian
trees with the same per-sample seeds.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from genmodels.diffusion import samplers as S
from genmodels.diffusion.denoisers import DiscreteDenoiser
from genmodels.diffusion.noise import BrownianTreeNoiseSampler
from genmodels.diffusion.schedules import get_sigmas_exponential, get_sigmas_karras
from tests._refs import k_diffusion

# k-diffusion's side queries its Brownian trees 1 ulp outside [t0, t1]; torchsde clamps and warns
pytestmark = pytest.mark.filterwarnings("ignore:Should have t:UserWarning")

B, STEPS = 3, 7


class TinyNet(nn.Module):
    """Stand-in for a UNet: depends on x, the timestep t and a per-sample conditioning."""

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.conv1 = nn.Conv2d(4, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 4, 3, padding=1)
        self.emb = nn.Linear(1, 8)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = self.conv1(x) + self.emb(t.float()[:, None] / 1000)[:, :, None, None]
        return self.conv2(torch.tanh(h)) * cond[:, None, None, None]


def _alphas_cumprod() -> torch.Tensor:
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0).float()


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny tensors: intra-op threads only add overhead (and thrash on a loaded 2-core box)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def setup():
    K = k_diffusion()
    net = TinyNet().eval()
    ac = _alphas_cumprod()
    ours = {p: DiscreteDenoiser(net, ac, prediction=p) for p in ("eps", "v")}
    ref = {
        "eps": K.external.DiscreteEpsDDPMDenoiser(net, ac, quantize=False),
        "v": K.external.DiscreteVDDPMDenoiser(net, ac, quantize=False),
    }
    return K, ours, ref


def _schedules(den: DiscreteDenoiser) -> dict[str, torch.Tensor]:
    smin, smax = den.sigma_min, den.sigma_max
    t = torch.linspace(len(den.sigmas) - 1, 0, STEPS)  # the model's own (k-diffusion get_sigmas)
    return {
        "karras": get_sigmas_karras(STEPS, smin, smax),
        "exponential": get_sigmas_exponential(STEPS, 0.1, 10.0),
        "model": torch.cat([den.t_to_sigma(t), t.new_zeros(1)]),
    }


# (registry name, k-diffusion function name, options) — several eta / s_noise / s_churn values
CASES = [
    ("euler", "sample_euler", {}),
    ("euler", "sample_euler", {"s_churn": 2.0, "s_tmin": 0.3, "s_tmax": 8.0, "s_noise": 1.003}),
    ("euler_ancestral", "sample_euler_ancestral", {}),
    ("euler_ancestral", "sample_euler_ancestral", {"eta": 0.5, "s_noise": 0.9}),
    ("heun", "sample_heun", {}),
    ("heun", "sample_heun", {"s_churn": 1.0, "s_noise": 0.8}),
    ("dpm_2", "sample_dpm_2", {}),
    ("dpm_2", "sample_dpm_2", {"s_churn": 3.0, "s_tmin": 0.5}),
    ("dpm_2_ancestral", "sample_dpm_2_ancestral", {}),
    ("dpm_2_ancestral", "sample_dpm_2_ancestral", {"eta": 0.7, "s_noise": 1.1}),
    ("lms", "sample_lms", {}),
    ("lms", "sample_lms", {"order": 2}),
    ("dpmpp_2s_ancestral", "sample_dpmpp_2s_ancestral", {}),
    ("dpmpp_2s_ancestral", "sample_dpmpp_2s_ancestral", {"eta": 0.0}),
    ("dpmpp_sde", "sample_dpmpp_sde", {}),
    ("dpmpp_sde", "sample_dpmpp_sde", {"eta": 0.5, "s_noise": 0.9, "r": 0.3}),
    ("dpmpp_2m", "sample_dpmpp_2m", {}),
    ("dpmpp_2m_sde", "sample_dpmpp_2m_sde", {}),
    ("dpmpp_2m_sde", "sample_dpmpp_2m_sde", {"eta": 0.0}),
    ("dpmpp_2m_sde_heun", "sample_dpmpp_2m_sde", {"solver_type": "heun"}),
    ("dpmpp_2m_sde_heun", "sample_dpmpp_2m_sde", {"solver_type": "heun", "eta": 0.6}),
    ("dpmpp_3m_sde", "sample_dpmpp_3m_sde", {}),
    ("dpmpp_3m_sde", "sample_dpmpp_3m_sde", {"eta": 0.0}),
    ("dpmpp_3m_sde", "sample_dpmpp_3m_sde", {"eta": 0.5, "s_noise": 1.05}),
]
RANGE_CASES = [
    ("dpm_fast", "sample_dpm_fast", {}),
    ("dpm_fast", "sample_dpm_fast", {"eta": 0.5, "s_noise": 0.9}),
    ("dpm_adaptive", "sample_dpm_adaptive", {}),
    ("dpm_adaptive", "sample_dpm_adaptive", {"order": 2, "rtol": 0.02, "eta": 0.3}),
]


def _ours_opts(name: str, opts: dict) -> dict:
    # our dpmpp_2m_sde_heun has solver_type fixed; k-diffusion gets it as an option
    return {
        k: v for k, v in opts.items() if not (name == "dpmpp_2m_sde_heun" and k == "solver_type")
    }


def assert_parity(ours: torch.Tensor, ref: torch.Tensor, msg: str = "") -> None:
    """Equal within 1e-5 relative (to the largest reference value)."""
    assert torch.isfinite(ref).all()
    scale = ref.abs().max().item()
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5 * scale, msg=msg or None)


def _x(seed: int = 0, sigma: float = 14.6) -> torch.Tensor:
    return torch.randn(B, 4, 8, 8, generator=torch.Generator().manual_seed(seed)) * sigma


@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("name,kname,opts", CASES, ids=lambda v: str(v))
def test_sigma_samplers_match_k_diffusion(setup, prediction, name, kname, opts):
    K, ours, ref = setup
    cond = torch.tensor([1.0, 0.7, 1.3])
    for sched_name, sigmas in _schedules(ours[prediction]).items():
        x = _x(sigma=float(sigmas[0]))
        torch.manual_seed(1234)
        out = S.get_sampler(name)(
            ours[prediction], x, sigmas, {"cond": cond}, disable=True, **_ours_opts(name, opts)
        )
        torch.manual_seed(1234)
        expected = getattr(K.sampling, kname)(
            ref[prediction], x, sigmas, {"cond": cond}, disable=True, **opts
        )
        assert_parity(out, expected, f"schedule {sched_name}")


@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("name,kname,opts", RANGE_CASES, ids=lambda v: str(v))
def test_range_samplers_match_k_diffusion(setup, prediction, name, kname, opts):
    K, ours, ref = setup
    cond = torch.tensor([1.0, 0.7, 1.3])
    for smin, smax, n in [(0.03, 14.6, 7), (0.1, 10.0, 9)]:
        extra = {"n": n} if name == "dpm_fast" else {}
        x = _x(sigma=smax)
        torch.manual_seed(99)
        out = S.get_sampler(name)(
            ours[prediction],
            x,
            smin,
            smax,
            extra_args={"cond": cond},
            disable=True,
            **extra,
            **opts,
        )
        torch.manual_seed(99)
        expected = getattr(K.sampling, kname)(
            ref[prediction], x, smin, smax, extra_args={"cond": cond}, disable=True, **extra, **opts
        )
        assert_parity(out, expected)


def test_dpm_adaptive_info_matches(setup):
    K, ours, ref = setup
    cond = torch.ones(B)
    x = _x(sigma=14.6)
    args = (x, 0.03, 14.6)
    _, info = S.sample_dpm_adaptive(
        ours["eps"], *args, {"cond": cond}, disable=True, return_info=True
    )
    _, kinfo = K.sampling.sample_dpm_adaptive(
        ref["eps"], *args, {"cond": cond}, disable=True, return_info=True
    )
    assert info == kinfo


@pytest.mark.parametrize("name", ["dpmpp_sde", "dpmpp_2m_sde", "dpmpp_3m_sde", "euler_ancestral"])
def test_explicit_brownian_tree_noise_matches(setup, name):
    """Per-sample seeded Brownian trees: ours vs k-diffusion's BrownianTreeNoiseSampler."""
    K, ours, ref = setup
    cond = torch.ones(B)
    sigmas = get_sigmas_karras(STEPS, 0.03, 14.6)
    x = _x(sigma=14.6)
    seeds = [11, 12, 13]
    ns = BrownianTreeNoiseSampler(x, 0.03, 14.6, seed=seeds)
    kns = K.sampling.BrownianTreeNoiseSampler(x, 0.03, 14.6, seed=seeds)
    out = S.get_sampler(name)(
        ours["eps"], x, sigmas, {"cond": cond}, disable=True, noise_sampler=ns
    )
    kname = "sample_" + name
    expected = getattr(K.sampling, kname)(
        ref["eps"], x, sigmas, {"cond": cond}, disable=True, noise_sampler=kns
    )
    assert_parity(out, expected)


def _record(calls: list):
    return lambda d: calls.append(
        {k: (v.clone() if torch.is_tensor(v) else v) for k, v in d.items()}
    )


@pytest.mark.parametrize(
    "name,kname,opts",
    [
        ("euler", "sample_euler", {"s_churn": 1.0}),
        ("dpmpp_2m", "sample_dpmpp_2m", {}),
        ("dpm_2_ancestral", "sample_dpm_2_ancestral", {}),
        ("dpm_fast", "sample_dpm_fast", {}),
    ],
)
def test_callbacks_match(setup, name, kname, opts):
    K, ours, ref = setup
    cond = torch.ones(B)
    x = _x(sigma=14.6)
    if name == "dpm_fast":
        args = (x, 0.03, 14.6, 6)
    else:
        args = (x, get_sigmas_karras(5, 0.03, 14.6))
    calls, kcalls = [], []
    torch.manual_seed(5)
    S.get_sampler(name)(ours["eps"], *args, {"cond": cond}, _record(calls), True, **opts)
    torch.manual_seed(5)
    getattr(K.sampling, kname)(ref["eps"], *args, {"cond": cond}, _record(kcalls), True, **opts)
    assert len(calls) == len(kcalls) > 0
    for got, exp in zip(calls, kcalls):
        assert set(got) == set(exp)
        assert got["i"] == exp["i"]
        for key in ("x", "denoised", "sigma", "sigma_hat"):
            assert_parity(torch.as_tensor(got[key]), torch.as_tensor(exp[key]))
