"""Noise samplers for stochastic samplers: ``noise_sampler(sigma, sigma_next) -> Tensor`` like x.

A noise sampler returns unit-variance Gaussian noise for the step ``sigma -> sigma_next``.
Three kinds:

* :func:`default_noise_sampler` draws from the global RNG with ``torch.randn_like`` (what
  k-diffusion does), for parity with code seeded through ``torch.manual_seed``.
* :class:`SeededNoiseSampler` draws each sample's noise from its own CPU ``torch.Generator``
  (seeds ``seed, seed+1, ...``), so a batch of N equals N single runs on any device.
* :class:`BrownianTreeNoiseSampler` returns normalised Brownian increments ``W(t1) - W(t0)``
  from a ``torchsde`` Brownian tree (k-diffusion's ``BatchedBrownianTree`` semantics). The
  noise then depends only on the interval, not on the step count, which SDE samplers such as
  DPM-Solver++ SDE rely on to converge as steps are added.
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

NoiseSampler = Callable[[Tensor, Tensor], Tensor]

__all__ = [
    "NoiseSampler",
    "default_noise_sampler",
    "seeded_randn",
    "SeededNoiseSampler",
    "BrownianTreeNoiseSampler",
    "slerp_noise",
    "variation_noise",
]


def default_noise_sampler(x: Tensor) -> NoiseSampler:
    """Noise from the global RNG via ``torch.randn_like(x)`` (k-diffusion's default)."""
    return lambda sigma, sigma_next: torch.randn_like(x)


def _expand_seeds(seeds: int | Sequence[int], batch: int) -> list[int]:
    """``int`` -> ``[seed, seed+1, ...]``; a sequence must hold one seed per sample."""
    if isinstance(seeds, numbers.Integral):
        return [int(seeds) + i for i in range(batch)]
    seeds = [int(s) for s in seeds]
    if len(seeds) != batch:
        raise ValueError(f"expected {batch} seeds (one per sample), got {len(seeds)}")
    return seeds


def seeded_randn(
    shape: Sequence[int],
    seeds: int | Sequence[int],
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Standard normal noise of ``shape`` (B, ...) where sample i comes from CPU seed ``seeds[i]``.

    Drawn in float32 on the CPU and then moved, so results do not depend on the device.
    """
    shape = tuple(shape)
    if len(shape) < 1:
        raise ValueError(f"shape must have a batch dimension, got {shape}")
    gens = [torch.Generator("cpu").manual_seed(s) for s in _expand_seeds(seeds, shape[0])]
    return _draw(gens, shape[1:], device, dtype)


def _draw(
    gens: Sequence[torch.Generator],
    sample_shape: tuple[int, ...],
    device: torch.device | str | None,
    dtype: torch.dtype | None,
) -> Tensor:
    noise = torch.stack([torch.randn(sample_shape, generator=g) for g in gens])  # (B, ...)
    return noise.to(device=device, dtype=dtype)


class SeededNoiseSampler:
    """Per-sample seeded noise: sample i draws from its own CPU generator seeded ``seeds[i]``.

    ``seeds`` is one int per sample, or a single int ``s`` meaning ``[s, s+1, ..., s+B-1]``.
    Each call advances every generator by one draw of a sample's shape, so running a batch
    of N gives the same result as N single runs with the matching seeds.
    """

    def __init__(self, x: Tensor, seeds: int | Sequence[int]) -> None:
        if x.ndim < 1:
            raise ValueError(f"x must have a batch dimension, got shape {tuple(x.shape)}")
        self.seeds = _expand_seeds(seeds, x.shape[0])
        self.generators = [torch.Generator("cpu").manual_seed(s) for s in self.seeds]
        self.sample_shape = tuple(x.shape[1:])
        self.device, self.dtype = x.device, x.dtype

    def __call__(self, sigma: Tensor | None = None, sigma_next: Tensor | None = None) -> Tensor:
        return _draw(self.generators, self.sample_shape, self.device, self.dtype)


def _torchsde():
    try:
        import torchsde
    except ModuleNotFoundError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "BrownianTreeNoiseSampler (used by the SDE samplers dpmpp_sde, dpmpp_2m_sde, "
            "dpmpp_3m_sde) needs torchsde: pip install torchsde"
        ) from err
    return torchsde


class BrownianTreeNoiseSampler:
    """Brownian-tree noise ``(W(t1) - W(t0)) / sqrt(|t1 - t0|)``, ``t = transform(sigma)``.

    ``seed``: ``None`` draws one seed from the global RNG (as k-diffusion does); an ``int`` builds
    one tree over the whole batch (k-diffusion semantics, so results match it); a list of ints
    builds one tree per sample, which makes a batch equal to the single runs.

    The trees live on the CPU (float32, or float64 for float64 x) and the noise is moved to x's
    device, so a seed gives the same noise on every device. (k-diffusion builds them on x's
    device; on the CPU the two are identical.)
    """

    def __init__(
        self,
        x: Tensor,
        sigma_min: float | Tensor,
        sigma_max: float | Tensor,
        seed: int | Sequence[int] | None = None,
        transform: Callable[[Tensor], Tensor] = lambda sigma: sigma,
    ) -> None:
        torchsde = _torchsde()
        self.transform = transform
        t0 = self._t(sigma_min)
        t1 = self._t(sigma_max)
        if not torch.isfinite(t0) or not torch.isfinite(t1) or t0 == t1:
            raise ValueError(
                f"need finite, distinct transform(sigma_min), transform(sigma_max); got "
                f"{float(t0)}, {float(t1)}"
            )
        self.sign = 1 if t0 < t1 else -1
        lo, hi = (t0, t1) if t0 < t1 else (t1, t0)
        if seed is None:
            seed = torch.randint(0, 2**63 - 1, []).item()  # k-diffusion draws it this way
        self.batched = not isinstance(seed, numbers.Integral)
        if self.batched:
            seeds = [int(s) for s in seed]
            if len(seeds) != x.shape[0]:
                raise ValueError(f"expected {x.shape[0]} seeds (one per sample), got {len(seeds)}")
            w0 = x.new_zeros(x.shape[1:], device="cpu")
        else:
            seeds = [int(seed)]
            w0 = x.new_zeros(x.shape, device="cpu")
        if w0.dtype != torch.float64:
            w0 = w0.float()
        self.trees = [torchsde.BrownianTree(lo, w0, hi, entropy=s) for s in seeds]
        self.device, self.dtype = x.device, x.dtype

    def _t(self, sigma: float | Tensor) -> Tensor:
        return self.transform(torch.as_tensor(sigma)).detach().cpu()

    def __call__(self, sigma: Tensor, sigma_next: Tensor) -> Tensor:
        t0, t1 = self._t(sigma), self._t(sigma_next)
        sign = self.sign * (1 if t0 < t1 else -1)
        lo, hi = (t0, t1) if t0 < t1 else (t1, t0)
        with warnings.catch_warnings():
            # sigma -> t round trips can leave a query 1 ulp outside [t0, t1]; torchsde clamps
            # it (the same result k-diffusion gets) and warns about it on every step.
            warnings.filterwarnings("ignore", "Should have t[ab]", UserWarning)
            w = torch.stack([tree(lo, hi) for tree in self.trees]) * sign  # (B, ...) / (1, B, ...)
        w = w if self.batched else w[0]
        return (w / (t1 - t0).abs().sqrt()).to(device=self.device, dtype=self.dtype)


def slerp_noise(strength: float, noise: Tensor, variation: Tensor) -> Tensor:
    """A1111's variation-seed mix: spherical interpolation from ``noise`` (strength 0) to
    ``variation`` (strength 1) for one sample (C, H, W).

    As A1111's ``slerp``, the vectors are normalised along dim 1 (the latent's rows), so each
    (channel, column) line is interpolated on its own great circle; nearly parallel noises
    (mean cosine > 0.9995) fall back to A1111's linear mix ``noise * t + variation * (1 - t)``.
    """
    if noise.shape != variation.shape:
        raise ValueError(f"noise {tuple(noise.shape)} and variation {tuple(variation.shape)}")
    low_norm = noise / torch.norm(noise, dim=1, keepdim=True)
    high_norm = variation / torch.norm(variation, dim=1, keepdim=True)
    dot = (low_norm * high_norm).sum(1)
    if dot.mean() > 0.9995:
        return noise * strength + variation * (1 - strength)
    omega = torch.acos(dot)
    so = torch.sin(omega)
    low = (torch.sin((1.0 - strength) * omega) / so).unsqueeze(1)
    high = (torch.sin(strength * omega) / so).unsqueeze(1)
    return low * noise + high * variation


def variation_noise(
    noise: Tensor, variation_seeds: Sequence[int], strength: float
) -> Tensor:  # fmt: skip
    """Initial noise (B, ...) mixed with the noise of ``variation_seeds`` (one per sample) by
    ``slerp_noise`` (A1111 "Variation seed" / "Variation seed strength")."""
    if strength == 0:
        return noise
    var = seeded_randn(noise.shape, list(variation_seeds), device=noise.device, dtype=noise.dtype)
    return torch.stack([slerp_noise(strength, n, v) for n, v in zip(noise, var)])
