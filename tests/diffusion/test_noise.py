"""Noise samplers: k-diffusion parity, Brownian-motion properties, per-sample seeding (a batch of
N equals N single runs), determinism and bad input."""

from __future__ import annotations

import math

import pytest
import torch

from genmodels.diffusion import samplers as S
from genmodels.diffusion.noise import (
    BrownianTreeNoiseSampler,
    SeededNoiseSampler,
    default_noise_sampler,
    seeded_randn,
)
from genmodels.diffusion.schedules import get_sigmas_karras
from tests._refs import k_diffusion

# k-diffusion's side queries its Brownian trees 1 ulp outside [t0, t1]; torchsde clamps and warns
pytestmark = pytest.mark.filterwarnings("ignore:Should have t:UserWarning")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_default_noise_sampler_is_global_randn_like():
    x = torch.zeros(2, 3, 4, dtype=torch.float64)
    torch.manual_seed(3)
    got = default_noise_sampler(x)(torch.tensor(1.0), torch.tensor(0.5))
    torch.manual_seed(3)
    assert torch.equal(got, torch.randn_like(x))


def test_seeded_noise_is_per_sample():
    x = torch.zeros(3, 2, 5)
    ns = SeededNoiseSampler(x, [7, 8, 9])
    first, second = ns(None, None), ns(None, None)
    assert first.shape == x.shape and first.dtype == x.dtype
    assert not torch.equal(first, second)
    for i, seed in enumerate([7, 8, 9]):
        gen = torch.Generator().manual_seed(seed)
        assert torch.equal(first[i], torch.randn(2, 5, generator=gen))
        assert torch.equal(second[i], torch.randn(2, 5, generator=gen))
    # an int seed s means [s, s+1, ...]; a single run with seed s+i equals sample i
    assert torch.equal(SeededNoiseSampler(x, 7)(None, None), first)
    assert torch.equal(SeededNoiseSampler(x[1:2], 8)(None, None), first[1:2])


def test_seeded_noise_dtype_and_randn():
    x = torch.zeros(2, 4, dtype=torch.float16)
    noise = SeededNoiseSampler(x, 5)(None, None)
    assert noise.dtype == torch.float16
    ref = seeded_randn((2, 4), 5)
    assert ref.dtype == torch.float32
    torch.testing.assert_close(noise.float(), ref, rtol=1e-3, atol=1e-3)
    assert torch.equal(seeded_randn((2, 4), [5, 6], dtype=torch.float64), ref.double())


def test_seeded_noise_bad_input():
    with pytest.raises(ValueError, match="expected 3 seeds"):
        SeededNoiseSampler(torch.zeros(3, 2), [1, 2])
    with pytest.raises(ValueError, match="batch dimension"):
        seeded_randn((), 0)


@pytest.mark.parametrize("seed", [42, [4, 5, 6]])
def test_brownian_tree_matches_k_diffusion(seed):
    K = k_diffusion()
    x = torch.zeros(3, 2, 4)
    sigmas = get_sigmas_karras(6, 0.05, 10.0)
    transform = lambda s: s.log()  # noqa: E731
    ours = BrownianTreeNoiseSampler(x, 0.05, 10.0, seed=seed, transform=transform)
    ref = K.sampling.BrownianTreeNoiseSampler(x, 0.05, 10.0, seed=seed, transform=transform)
    for a, b in zip(sigmas[:-2], sigmas[1:-1]):
        torch.testing.assert_close(ours(a, b), ref(a, b), rtol=1e-6, atol=1e-6)


def test_brownian_tree_default_seed_comes_from_global_rng():
    K = k_diffusion()
    x = torch.zeros(2, 3)
    torch.manual_seed(0)
    ours = BrownianTreeNoiseSampler(x, 0.1, 5.0)(torch.tensor(5.0), torch.tensor(1.0))
    torch.manual_seed(0)
    ref = K.sampling.BrownianTreeNoiseSampler(x, 0.1, 5.0)(torch.tensor(5.0), torch.tensor(1.0))
    torch.testing.assert_close(ours, ref)


def test_brownian_increments_add_up():
    """W(c) - W(a) = (W(b) - W(a)) + (W(c) - W(b)), whatever the order of the queries."""
    x = torch.zeros(2, 8, dtype=torch.float64)
    ns = BrownianTreeNoiseSampler(x, 0.1, 10.0, seed=[1, 2])
    a, b, c = (torch.tensor(v, dtype=torch.float64) for v in (6.0, 2.0, 0.5))
    whole = ns(a, c) * math.sqrt(5.5)
    parts = ns(a, b) * math.sqrt(4.0) + ns(b, c) * math.sqrt(1.5)
    torch.testing.assert_close(whole, parts, rtol=1e-6, atol=1e-6)
    again = BrownianTreeNoiseSampler(x, 0.1, 10.0, seed=[1, 2])
    torch.testing.assert_close(again(b, c), ns(b, c))  # query-order independent
    torch.testing.assert_close(ns(c, a), -ns(a, c))  # the sign follows the direction of t


def test_brownian_noise_is_standard_normal():
    x = torch.zeros(1, 20000)
    ns = BrownianTreeNoiseSampler(x, 0.1, 10.0, seed=3)
    noise = torch.cat([ns(torch.tensor(10.0), torch.tensor(3.0)), ns(torch.tensor(3.0), 0.2)])
    assert abs(noise.mean().item()) < 0.02
    assert abs(noise.std().item() - 1) < 0.02
    # disjoint intervals are independent
    corr = torch.corrcoef(noise.view(2, -1))[0, 1].item()
    assert abs(corr) < 0.03


def test_brownian_tree_per_sample_seeds_are_batch_invariant():
    x = torch.zeros(3, 5)
    batch = BrownianTreeNoiseSampler(x, 0.1, 10.0, seed=[10, 11, 12])(torch.tensor(8.0), 1.0)
    for i in range(3):
        single = BrownianTreeNoiseSampler(x[i : i + 1], 0.1, 10.0, seed=[10 + i])
        torch.testing.assert_close(single(torch.tensor(8.0), 1.0), batch[i : i + 1])


def test_brownian_tree_bad_input():
    with pytest.raises(ValueError, match="expected 3 seeds"):
        BrownianTreeNoiseSampler(torch.zeros(3, 2), 0.1, 1.0, seed=[1])
    with pytest.raises(ValueError, match="distinct"):
        BrownianTreeNoiseSampler(torch.zeros(3, 2), 1.0, 1.0, seed=0)


def _denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-sample, nonlinear stand-in for a network."""
    s = sigma.view(-1, *[1] * (x.ndim - 1))
    return torch.tanh(x / (1 + s**2) ** 0.5) * 0.9


def _run(name: str, x: torch.Tensor, seeds: list[int], sigmas: torch.Tensor, kind: str, **opts):
    if kind == "brownian":
        ns = BrownianTreeNoiseSampler(x, sigmas[-2], sigmas[0], seed=seeds)
    else:
        ns = SeededNoiseSampler(x, seeds)
    return S.get_sampler(name)(_denoiser, x, sigmas, disable=True, noise_sampler=ns, **opts)


BATCH_CASES = [
    ("euler", "seeded", {"s_churn": 5.0}),
    ("heun", "seeded", {"s_churn": 5.0}),
    ("dpm_2", "seeded", {"s_churn": 5.0}),
    ("euler_ancestral", "seeded", {}),
    ("dpm_2_ancestral", "seeded", {}),
    ("dpmpp_2s_ancestral", "seeded", {}),
    ("dpmpp_sde", "brownian", {}),
    ("dpmpp_2m_sde", "brownian", {}),
    ("dpmpp_2m_sde_heun", "seeded", {}),
    ("dpmpp_3m_sde", "brownian", {}),
]


@pytest.mark.parametrize("name,kind,opts", BATCH_CASES, ids=lambda v: str(v))
def test_batch_equals_single_runs_and_is_deterministic(name, kind, opts):
    sigmas = get_sigmas_karras(6, 0.05, 10.0)
    seeds = [100, 101, 102]
    x = seeded_randn((3, 2, 4, 4), seeds) * 10.0
    batch = _run(name, x, seeds, sigmas, kind, **opts)
    torch.manual_seed(0)  # the global RNG must not matter
    again = _run(name, x, seeds, sigmas, kind, **opts)
    assert torch.equal(batch, again)
    for i, seed in enumerate(seeds):
        single = _run(name, x[i : i + 1], [seed], sigmas, kind, **opts)
        torch.testing.assert_close(single, batch[i : i + 1], rtol=1e-6, atol=1e-6)
    other = _run(name, x, [7, 8, 9], sigmas, kind, **opts)
    assert not torch.allclose(other, batch)


@pytest.mark.parametrize("name", ["dpm_fast"])
def test_range_sampler_batch_invariance(name):
    seeds = [3, 4]
    x = seeded_randn((2, 3, 4), seeds) * 10.0
    run = lambda x, s: S.sample_dpm_fast(  # noqa: E731
        _denoiser, x, 0.05, 10.0, 8, disable=True, eta=1.0, noise_sampler=SeededNoiseSampler(x, s)
    )
    batch = run(x, seeds)
    for i in range(2):
        torch.testing.assert_close(run(x[i : i + 1], [seeds[i]]), batch[i : i + 1])
