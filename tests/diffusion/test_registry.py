"""Sampler registry: the one table (names, A1111 aliases, flags), SamplerInfo facts checked
against behaviour, and the shared input validation every sampler runs at entry."""

from __future__ import annotations

import pytest
import torch

from genmodels.diffusion import samplers as S
from genmodels.diffusion.samplers.registry import SamplerInfo
from genmodels.diffusion.schedules import get_sigmas_karras

K_NAMES = {
    "euler": "sample_euler",
    "euler_ancestral": "sample_euler_ancestral",
    "heun": "sample_heun",
    "dpm_2": "sample_dpm_2",
    "dpm_2_ancestral": "sample_dpm_2_ancestral",
    "lms": "sample_lms",
    "dpm_fast": "sample_dpm_fast",
    "dpm_adaptive": "sample_dpm_adaptive",
    "dpmpp_2s_ancestral": "sample_dpmpp_2s_ancestral",
    "dpmpp_sde": "sample_dpmpp_sde",
    "dpmpp_2m": "sample_dpmpp_2m",
    "dpmpp_2m_sde": "sample_dpmpp_2m_sde",
    "dpmpp_2m_sde_heun": "sample_dpmpp_2m_sde_heun",
    "dpmpp_3m_sde": "sample_dpmpp_3m_sde",
}
SIGMA_LIST = [n for n in K_NAMES if n not in ("dpm_fast", "dpm_adaptive")]
# every sampler called with ``sigmas`` (k-diffusion's and the extra ones)
ALL_SIGMA_LIST = [n for n, info in S.SAMPLER_INFO.items() if not info.uses_sigma_range]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_all_k_diffusion_names_registered():
    for name, fn_name in K_NAMES.items():
        assert S.SAMPLERS[name] is getattr(S, fn_name)
        assert S.get_sampler(name) is S.SAMPLERS[name]
    assert set(S.SAMPLER_INFO) == set(S.SAMPLERS)


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="unknown sampler 'eular'.*euler, euler_ancestral"):
        S.get_sampler("eular")
    with pytest.raises(ValueError, match="must be a string"):
        S.resolve_sampler(3)


@pytest.mark.parametrize(
    "alias,expected",
    [
        ("Euler a", ("euler_ancestral", None)),
        ("euler A", ("euler_ancestral", None)),
        ("DPM++ 2M Karras", ("dpmpp_2m", "karras")),
        ("dpm++ 2m karras", ("dpmpp_2m", "karras")),
        ("DPM++ SDE Karras", ("dpmpp_sde", "karras")),
        ("DPM++ 2M SDE Exponential", ("dpmpp_2m_sde", "exponential")),
        ("DPM++ 2M SDE Heun Karras", ("dpmpp_2m_sde_heun", "karras")),
        ("DPM++ 3M SDE Exponential", ("dpmpp_3m_sde", "exponential")),
        ("DPM2 a Karras", ("dpm_2_ancestral", "karras")),
        ("LMS Karras", ("lms", "karras")),
        ("DPM fast", ("dpm_fast", None)),
        ("DPM adaptive", ("dpm_adaptive", None)),
        ("Heun", ("heun", None)),
        ("DPM++ 2S a", ("dpmpp_2s_ancestral", None)),
        ("dpmpp_2m", ("dpmpp_2m", None)),
        (" DPMPP_2M_SDE ", ("dpmpp_2m_sde", None)),
    ],
)
def test_resolve_sampler(alias, expected):
    assert S.resolve_sampler(alias) == expected
    assert S.get_sampler(alias) is S.SAMPLERS[expected[0]]


@pytest.mark.parametrize(
    "alias,expected",
    [("DDIM", "ddim"), ("PLMS", "plms"), ("UniPC", "uni_pc"), ("LCM", "lcm")],
)
def test_aliases_of_extra_samplers(alias, expected):
    assert S.resolve_sampler(alias.lower()) == (expected, None)


def test_table_is_the_single_source():
    """SAMPLERS and A1111_ALIASES are views of SAMPLER_INFO; every row has its flags."""
    assert list(S.SAMPLERS) == list(S.SAMPLER_INFO)
    for name, info in S.SAMPLER_INFO.items():
        assert isinstance(info, SamplerInfo), name
        assert S.SAMPLERS[name] is info.fn and callable(info.fn), name
        assert info.fn.__name__ == f"sample_{name}", name
        assert S.get_sampler_info(name) is info
    fns = [info.fn for info in S.SAMPLER_INFO.values()]
    assert len(set(fns)) == len(fns)
    a1111 = [info.a1111 for info in S.SAMPLER_INFO.values() if info.a1111 is not None]
    assert len(set(a1111)) == len(a1111)
    lower = [alias.lower() for alias in S.A1111_ALIASES]
    assert len(set(lower)) == len(lower)  # case-insensitive lookup is unambiguous
    for alias, (sampler, _) in S.A1111_ALIASES.items():  # "Euler" -> euler, never another
        # but for "DDIM": A1111's DDIM (ddim_a1111) differs from ours / ComfyUI's "ddim"
        assert alias.lower() not in S.SAMPLERS or alias.lower() == sampler or alias == "DDIM"
    expected = sum(1 + len(i.a1111_schedules) for i in S.SAMPLER_INFO.values() if i.a1111)
    assert len(S.A1111_ALIASES) == expected


def test_every_alias_resolves_to_its_row():
    for alias, (sampler, scheduler) in S.A1111_ALIASES.items():
        assert S.resolve_sampler(alias) == (sampler, scheduler), alias
        assert S.resolve_sampler(alias.upper()) == (sampler, scheduler), alias
        info = S.SAMPLER_INFO[sampler]
        assert alias.startswith(info.a1111), alias
        assert scheduler in (None, info.a1111_scheduler) or scheduler in info.a1111_schedules


def test_a1111_ddim_is_its_own_sampler():
    assert S.resolve_sampler("DDIM") == ("ddim_a1111", "ddim_uniform")
    assert S.resolve_sampler("ddim") == ("ddim", None)
    assert S.SAMPLER_INFO["ddim_a1111"].vp_start


def test_flags():
    flags = {
        "discard_penultimate_sigma": {"dpm_2", "dpm_2_ancestral", "uni_pc", "uni_pc_bh2"},
        "uses_sigma_range": {"dpm_fast", "dpm_adaptive"},
        "steps_as_n": {"dpm_fast"},
        "brownian_noise": {"dpmpp_sde", "dpmpp_2m_sde", "dpmpp_2m_sde_heun", "dpmpp_3m_sde"},
    }
    for flag, names in flags.items():
        assert {n for n, i in S.SAMPLER_INFO.items() if getattr(i, flag)} == names, flag


def test_sampler_info_is_validated():
    fn = S.sample_euler
    with pytest.raises(ValueError, match="kind"):
        SamplerInfo(fn, "x", "stochastic", 1, 1)
    with pytest.raises(ValueError, match=">= 1"):
        SamplerInfo(fn, "x", "ode", 0, 1)
    with pytest.raises(ValueError, match="a1111_schedules must be"):
        SamplerInfo(fn, "x", "ode", 1, 1, a1111="X", a1111_schedules=("beta",))
    with pytest.raises(ValueError, match="needs an a1111 name"):
        SamplerInfo(fn, "x", "ode", 1, 1, a1111_schedules=("karras",))
    with pytest.raises(ValueError, match="steps_as_n"):
        SamplerInfo(fn, "x", "ode", 1, 1, steps_as_n=True)
    assert S.get_sampler_info("DPM++ 2M Karras").model_calls_per_step == 1


class CountingDenoiser:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x / (1 + sigma.view(-1, 1) ** 2)


@pytest.mark.parametrize("name", ALL_SIGMA_LIST)
def test_info_matches_behaviour(name):
    """model_calls_per_step: counted on steps that do not end at 0; kind "ode": the result does
    not depend on the global RNG; "sde"/"ancestral": it does."""
    info = S.SAMPLER_INFO[name]
    assert not info.uses_sigma_range
    sigmas = get_sigmas_karras(5, 0.1, 10.0)[:-1]  # 4 steps, none to 0
    x = torch.linspace(-10, 10, 8).view(2, 4)
    den = CountingDenoiser()
    torch.manual_seed(0)
    out_a = S.SAMPLERS[name](den, x, sigmas, disable=True)
    assert den.calls == 4 * info.model_calls_per_step + (name == "plms")  # + its warm-up call
    torch.manual_seed(1)
    out_b = S.SAMPLERS[name](den, x, sigmas, disable=True)
    assert torch.equal(out_a, out_b) == (info.kind == "ode")


@pytest.mark.parametrize("name", ["dpm_fast", "dpm_adaptive"])
def test_range_samplers_info(name):
    info = S.SAMPLER_INFO[name]
    assert info.uses_sigma_range and info.kind == "ode"
    den = CountingDenoiser()
    extra = {"n": 9} if name == "dpm_fast" else {}
    S.SAMPLERS[name](den, torch.ones(2, 4), 0.1, 10.0, disable=True, **extra)
    if name == "dpm_fast":
        assert den.calls == 9
    else:
        assert den.calls % info.model_calls_per_step == 0


BAD_SIGMAS = [
    (torch.tensor([1.0, 2.0, 0.0]), "non-increasing"),
    (torch.tensor([3.0, float("nan"), 0.0]), "finite"),
    (torch.tensor([3.0, float("inf"), 0.0]), "finite"),
    (torch.tensor([3.0]), "at least 2"),
    (torch.tensor([[3.0, 0.0]]), "1-D"),
    (torch.tensor([1.0, -1.0]), ">= 0"),
    ([3.0, 0.0], "torch.Tensor"),
]


@pytest.mark.parametrize("name", SIGMA_LIST)
@pytest.mark.parametrize("sigmas,match", BAD_SIGMAS, ids=[m for _, m in BAD_SIGMAS])
def test_bad_sigmas_raise(name, sigmas, match):
    with pytest.raises(ValueError, match=match):
        S.SAMPLERS[name](CountingDenoiser(), torch.ones(2, 4), sigmas, disable=True)


@pytest.mark.parametrize("name", ["dpm_fast", "dpm_adaptive"])
@pytest.mark.parametrize(
    "sigma_min,sigma_max", [(0.0, 1.0), (2.0, 1.0), (1.0, 1.0), (0.1, float("inf"))]
)
def test_bad_sigma_range_raises(name, sigma_min, sigma_max):
    extra = {"n": 5} if name == "dpm_fast" else {}
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        S.SAMPLERS[name](CountingDenoiser(), torch.ones(2, 4), sigma_min, sigma_max, **extra)


def test_bad_options_raise():
    x, sigmas = torch.ones(2, 4), get_sigmas_karras(4, 0.1, 10.0)
    with pytest.raises(ValueError, match="n \\(number of model evaluations\\)"):
        S.sample_dpm_fast(CountingDenoiser(), x, 0.1, 10.0, 0)
    with pytest.raises(ValueError, match="order should be 2 or 3"):
        S.sample_dpm_adaptive(CountingDenoiser(), x, 0.1, 10.0, order=4)
    with pytest.raises(ValueError, match="solver_type"):
        S.sample_dpmpp_2m_sde(CountingDenoiser(), x, sigmas, solver_type="rk4")
    with pytest.raises(ValueError, match="order must be >= 1"):
        S.sample_lms(CountingDenoiser(), x, sigmas, order=0)
    with pytest.raises(ValueError, match="r must be in"):
        S.sample_dpmpp_sde(CountingDenoiser(), x, sigmas, r=0.0)
