"""The one-call ``sample()``: batch invariance, determinism, name resolution, bad input."""

from __future__ import annotations

import pytest
import torch

from genmodels.diffusion.denoisers import DiscreteDenoiser
from genmodels.diffusion.samplers.registry import SAMPLER_INFO, SAMPLERS
from genmodels.diffusion.sampling import sample, sampler_sigmas
from genmodels.diffusion.schedules import compute_sigmas, make_alphas_cumprod


class Net(torch.nn.Module):
    """A per-sample network (no cross-sample mixing), eps-prediction."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(2, 2, 3, padding=1)

    def forward(self, x, t):
        return torch.tanh(self.conv(x)) * (1 + t[:, None, None, None] / 1000)


@pytest.fixture(scope="module")
def den() -> DiscreteDenoiser:
    return DiscreteDenoiser(Net(), make_alphas_cumprod())


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_batch_equals_single_runs(den: DiscreteDenoiser, sampler: str) -> None:
    kw = dict(sampler=sampler, steps=4, scheduler="karras")
    if sampler in ("euler", "heun", "dpm_2"):
        kw["s_churn"] = 1.0  # exercise their stochastic path too
    batch = sample(den, (3, 2, 8, 8), seeds=[5, 6, 7], **kw)
    if sampler == "dpm_adaptive":
        # its step-size controller measures the error over the whole batch (as k-diffusion's
        # does), so only determinism holds, not batch invariance
        torch.testing.assert_close(sample(den, (3, 2, 8, 8), seeds=5, **kw), batch, rtol=0, atol=0)
        return
    singles = torch.cat([sample(den, (1, 2, 8, 8), seeds=s, **kw) for s in (5, 6, 7)])
    torch.testing.assert_close(batch, singles, rtol=1e-4, atol=1e-4)
    assert torch.isfinite(batch).all()
    again = sample(den, (3, 2, 8, 8), seeds=5, **kw)  # int seed = 5, 6, 7
    torch.testing.assert_close(again, batch, rtol=0, atol=0)
    if SAMPLER_INFO[sampler].kind != "ode" or "s_churn" in kw:
        other = sample(den, (3, 2, 8, 8), seeds=[8, 9, 10], **kw)
        assert not torch.allclose(other, batch)


def test_a1111_names_and_discarded_sigma(den: DiscreteDenoiser) -> None:
    name, sig = sampler_sigmas(den, "DPM++ 2M Karras", None, 10)
    assert name == "dpmpp_2m"
    torch.testing.assert_close(sig, compute_sigmas("karras", den, 10))
    name, sig = sampler_sigmas(den, "dpm_2", "karras", 10)
    full = compute_sigmas("karras", den, 11)
    assert len(sig) == 11 and torch.equal(sig, torch.cat([full[:-2], full[-1:]]))
    _, sig = sampler_sigmas(den, "euler", None, 10)
    torch.testing.assert_close(sig, compute_sigmas("normal", den, 10))


def test_init_and_explicit_sigmas(den: DiscreteDenoiser) -> None:
    init = torch.randn(2, 2, 8, 8)
    sigmas = torch.tensor([2.0, 1.0, 0.5, 0.0])
    out = sample(den, (2, 2, 8, 8), sigmas=sigmas, init=init, seeds=1)
    steps: list[float] = []
    sample(
        den,
        (2, 2, 8, 8),
        sigmas=sigmas,
        init=init,
        seeds=1,
        callback=lambda d: steps.append(float(d["sigma"])),
    )
    assert steps == [2.0, 1.0, 0.5] and out.shape == init.shape


def test_bad_input(den: DiscreteDenoiser) -> None:
    with pytest.raises(ValueError, match="unknown sampler 'nope'"):
        sample(den, (1, 2, 8, 8), sampler="nope")
    with pytest.raises(ValueError, match="unknown scheduler"):
        sample(den, (1, 2, 8, 8), scheduler="nope")
    with pytest.raises(ValueError, match="steps"):
        sample(den, (1, 2, 8, 8), steps=-1)
    with pytest.raises(ValueError, match="expected 2 seeds"):
        sample(den, (2, 2, 8, 8), seeds=[1, 2, 3])
    with pytest.raises(ValueError, match="init has shape"):
        sample(den, (2, 2, 8, 8), init=torch.zeros(1, 2, 8, 8))
    with pytest.raises(ValueError):
        sample(den, (1, 2, 8, 8), sigmas=torch.tensor([1.0, 2.0, 0.0]))
    with pytest.raises(ValueError):
        sample(den, (1, 2, 8, 8), sigmas=torch.tensor([2.0, float("nan"), 0.0]))
