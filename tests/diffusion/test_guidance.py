"""Classifier-free guidance wrapper: batching, formula, rescale, schedule, bad input."""

from __future__ import annotations

import pytest
import torch

from genmodels.diffusion.guidance import CFGDenoiser, rescale_guidance


class CountingDenoiser:
    sigma_min, sigma_max = 0.03, 14.6

    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, x, sigma, context):
        self.calls.append(x.shape[0])
        return x * 0.5 + context.mean(dim=(1, 2))[:, None, None, None] * sigma[:, None, None, None]


def _parts(x, sigma, den, c, u):
    return den(x, sigma, context=c), den(x, sigma, context=u)


def test_cfg_formula_and_single_batched_call() -> None:
    den = CountingDenoiser()
    x, sigma = torch.randn(2, 4, 8, 8), torch.tensor([3.0, 3.0])
    c, u = torch.randn(2, 7, 16), torch.randn(2, 7, 16)
    cfg = CFGDenoiser(den, {"context": u}, scale=7.5)
    out = cfg(x, sigma, context=c)
    assert den.calls == [4]  # one call, cond and uncond batched
    dc, du = _parts(x, sigma, den, c, u)
    torch.testing.assert_close(out, du + 7.5 * (dc - du))
    assert cfg.sigma_max == 14.6  # schedules can read the wrapped model's range


def test_scale_one_runs_cond_only_and_uncond_broadcast() -> None:
    den = CountingDenoiser()
    x, sigma = torch.randn(3, 4, 8, 8), torch.full((3,), 2.0)
    c, u = torch.randn(3, 7, 16), torch.randn(1, 7, 16)
    out = CFGDenoiser(den, {"context": u}, scale=1.0)(x, sigma, context=c)
    assert den.calls == [3]
    torch.testing.assert_close(out, den(x, sigma, context=c))
    out = CFGDenoiser(den, {"context": u}, scale=2.0)(x, sigma, context=c)
    dc, du = _parts(x, sigma, den, c, u.expand(3, 7, 16))
    torch.testing.assert_close(out, du + 2.0 * (dc - du))


def test_schedule_and_interval() -> None:
    den = CountingDenoiser()
    x, c, u = torch.randn(1, 4, 8, 8), torch.randn(1, 7, 16), torch.randn(1, 7, 16)
    cfg = CFGDenoiser(den, {"context": u}, scale=lambda s: 1.0 + s, sigma_range=(0.5, 5.0))
    for s, w in [(10.0, 1.0), (3.0, 4.0), (0.1, 1.0)]:
        sigma = torch.tensor([s])
        dc, du = _parts(x, sigma, den, c, u)
        torch.testing.assert_close(cfg(x, sigma, context=c), du + w * (dc - du))


def test_guidance_rescale() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 4, 8, 8) * 4
    sigma = torch.tensor([4.0, 0.7])
    x0_c, x0_u = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    x0_cfg = x0_u + 5 * (x0_c - x0_u)
    torch.testing.assert_close(
        rescale_guidance(x, sigma, x0_c, x0_cfg, 0.0), x0_cfg, rtol=1e-5, atol=1e-5
    )
    # phi = 1: the returned prediction's v has exactly the per-sample std of the cond v
    s = sigma[:, None, None, None]
    a, b = (1 + s**2) ** -0.5, s * (1 + s**2) ** -0.5

    def v(x0):
        return a * (x - x0) / s - b * x0

    out = rescale_guidance(x, sigma, x0_c, x0_cfg, 1.0)
    torch.testing.assert_close(v(out).std(dim=(1, 2, 3)), v(x0_c).std(dim=(1, 2, 3)))
    # and it is v_cfg scaled by that ratio (Lin et al. 2023, Algorithm 2)
    ratio = v(x0_c).std(dim=(1, 2, 3)) / v(x0_cfg).std(dim=(1, 2, 3))
    torch.testing.assert_close(v(out), v(x0_cfg) * ratio[:, None, None, None], rtol=1e-4, atol=1e-4)


def test_bad_input() -> None:
    den = CountingDenoiser()
    with pytest.raises(ValueError, match="scale must be >= 0"):
        CFGDenoiser(den, {"context": torch.zeros(1, 7, 16)}, scale=-1)
    with pytest.raises(ValueError, match="phi"):
        CFGDenoiser(den, {}, rescale=2.0)
    cfg = CFGDenoiser(den, {"context": torch.zeros(1, 5, 16)}, scale=3.0)
    with pytest.raises(ValueError, match=r"cond\['context'\] has shape \(2, 7, 16\)"):
        cfg(torch.randn(2, 4, 8, 8), torch.ones(2), context=torch.randn(2, 7, 16))
    with pytest.raises(ValueError, match="same keys"):
        CFGDenoiser(den, {"y": torch.zeros(1, 3)}, scale=3.0)(
            torch.randn(1, 4, 8, 8), torch.ones(1), context=torch.randn(1, 7, 16)
        )


def test_cfg_cutoff_skips_the_uncond_pass_below_its_sigma() -> None:
    from genmodels.diffusion.guidance import CFGDenoiser, cfg_cutoff_range

    calls: list[int] = []

    def denoiser(x: torch.Tensor, sigma: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[0])
        return x * c.view(-1, 1) / (1 + sigma.view(-1, 1))

    x, cond, uncond = torch.ones(2, 3), {"c": torch.full((2,), 2.0)}, {"c": torch.zeros(1)}
    off = CFGDenoiser(denoiser, uncond, 5.0)
    assert cfg_cutoff_range(0) is None  # a cut-off at sigma 0 is no cut-off
    at_zero = CFGDenoiser(denoiser, uncond, 5.0, sigma_range=cfg_cutoff_range(0.0))
    for sigma in (3.0, 0.5, 0.0):
        assert torch.equal(
            at_zero(x, torch.tensor(sigma), **cond), off(x, torch.tensor(sigma), **cond)
        )
    cut = CFGDenoiser(denoiser, uncond, 5.0, sigma_range=cfg_cutoff_range(1.0))
    calls.clear()
    cut(x, torch.tensor(2.0), **cond)  # above: both passes in one batch
    cut(x, torch.tensor(1.0), **cond)  # at the cut-off: still guided
    below = cut(x, torch.tensor(0.5), **cond)  # below: the conditional pass alone
    assert calls == [4, 4, 2]
    assert torch.equal(below, denoiser(x, torch.tensor([0.5, 0.5]), cond["c"]))
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="CFG cut-off"):
            cfg_cutoff_range(bad)
