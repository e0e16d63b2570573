"""Denoisers: wrappers that turn a raw network into the one contract every sampler uses.

    denoiser(x, sigma, **cond) -> estimate of the clean x0, same shape as x

``x = x0 + sigma * noise`` (variance-exploding form, as in k-diffusion). Each wrapper applies a
parameterisation: the scalings of the input, and how the network output becomes x0.

* ``DiscreteDenoiser``: DDPM-trained networks (Stable Diffusion) predicting eps, v or x0 at
  integer timesteps; ``sigma = sqrt((1 - alphas_cumprod) / alphas_cumprod)``.
* ``KarrasDenoiser``: EDM preconditioning (Karras et al. 2022, Table 1).
* ``FlowDenoiser``: rectified flow / flow matching, ``x_t = (1 - t) x0 + t noise``.

Every denoiser also exposes what schedules need (``sigma_min``, ``sigma_max``, ``sigmas``,
``sigma_to_t``, ``t_to_sigma``; see ``schedules.SigmaModel``).
"""

from __future__ import annotations

import copy
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from .schedules import shift_flow_t

__all__ = [
    "Denoiser", "DiscreteDenoiser", "FlowDenoiser", "KarrasDenoiser", "WrappedDenoiser",
    "append_dims", "with_model",
]  # fmt: skip

PREDICTIONS = ("eps", "v", "x0")


class Denoiser(Protocol):
    """The denoiser contract (see DESIGN.md)."""

    sigma_min: float
    sigma_max: float

    def __call__(self, x: Tensor, sigma: Tensor, **cond: Any) -> Tensor: ...


def with_model(denoiser: nn.Module, model: nn.Module) -> nn.Module:
    """A copy of a denoiser wrapper (``DiscreteDenoiser``, ``KarrasDenoiser``, ``FlowDenoiser``)
    around another network, sharing its schedule; the original is left untouched. Used to put a
    per-run wrapper (``models.feature_cache.CachedModel``) between a denoiser and its UNet."""
    if not isinstance(getattr(denoiser, "model", None), nn.Module):
        raise TypeError(f"{type(denoiser).__name__} has no .model network to replace")
    new = copy.copy(denoiser)
    new._modules = dict(denoiser._modules)  # copy.copy shares the submodule table
    new.model = model
    return new


def append_dims(v: Tensor, ndim: int) -> Tensor:
    """Append singleton dims so a (B,) tensor broadcasts against an ndim tensor."""
    if v.ndim > ndim:
        raise ValueError(f"cannot broadcast a {v.ndim}-d tensor to {ndim} dims")
    return v.reshape(*v.shape, *([1] * (ndim - v.ndim)))


def _sigma_batch(sigma: Tensor | float, x: Tensor) -> Tensor:
    """sigma as a float32 (B,) tensor on x's device; a scalar is broadcast over the batch."""
    sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device)
    if sigma.ndim == 0:
        sigma = sigma.expand(x.shape[0])
    if sigma.shape != (x.shape[0],):
        raise ValueError(f"sigma must have shape ({x.shape[0]},), got {tuple(sigma.shape)}")
    return sigma


def _check_prediction(prediction: str) -> None:
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction {prediction!r}; valid: {', '.join(PREDICTIONS)}")


class DiscreteDenoiser(nn.Module):
    """A DDPM network ``model(x_in, t, **cond)`` predicting eps, v or x0, as a denoiser.

    With ``x_vp = x / sqrt(1 + sigma^2)`` the network sees its training input. Then
    eps: x0 = x - sigma * eps;  v (Salimans & Ho 2022):
    x0 = x / (1 + sigma^2) - sigma / sqrt(1 + sigma^2) * v;  x0: the output itself.

    sigma -> t: ``quantize=False`` interpolates t linearly in log(sigma) between training steps
    (k-diffusion's default); ``quantize=True`` rounds to the nearest training step (ComfyUI,
    diffusers). ``t_to_sigma`` interpolates log(sigma) for fractional t.
    """

    def __init__(
        self,
        model: nn.Module,
        alphas_cumprod: Tensor,
        prediction: str = "eps",
        quantize: bool = False,
    ) -> None:
        super().__init__()
        _check_prediction(prediction)
        alphas_cumprod = torch.as_tensor(alphas_cumprod)
        if alphas_cumprod.ndim != 1 or len(alphas_cumprod) < 2:
            raise ValueError("alphas_cumprod must be a 1-D tensor with at least 2 entries")
        if not bool(((alphas_cumprod > 0) & (alphas_cumprod < 1)).all()):
            raise ValueError("alphas_cumprod must lie strictly between 0 and 1")
        self.model = model
        self.prediction = prediction
        self.quantize = quantize
        sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
        self.register_buffer("sigmas", sigmas.float(), persistent=False)
        self.register_buffer("log_sigmas", self.sigmas.log(), persistent=False)

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def sigma_to_t(self, sigma: Tensor, quantize: bool | None = None) -> Tensor:
        """Training timestep (fractional unless quantized) of each sigma."""
        quantize = self.quantize if quantize is None else quantize
        log_sigmas = self.log_sigmas.to(torch.as_tensor(sigma).device)
        log_sigma = torch.as_tensor(sigma, dtype=torch.float32, device=log_sigmas.device).log()
        dists = log_sigma - log_sigmas[:, None]  # (T, N)
        if quantize:
            return dists.abs().argmin(dim=0).view(log_sigma.shape)
        # index of the last training sigma <= sigma, kept one below the end for the upper bound
        low = dists.ge(0).cumsum(dim=0).argmax(dim=0).clamp(max=len(log_sigmas) - 2)
        low_log, high_log = log_sigmas[low], log_sigmas[low + 1]
        w = ((low_log - log_sigma) / (low_log - high_log)).clamp(0, 1)
        return ((1 - w) * low + w * (low + 1)).view(log_sigma.shape)

    def t_to_sigma(self, t: Tensor) -> Tensor:
        """sigma at (possibly fractional) timestep t, interpolating log(sigma)."""
        t = torch.as_tensor(t, dtype=torch.float32, device=self.log_sigmas.device)
        t = t.clamp(0, len(self.log_sigmas) - 1)
        low, high, w = t.floor().long(), t.ceil().long(), t.frac()
        return ((1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]).exp()

    def forward(self, x: Tensor, sigma: Tensor, **cond: Any) -> Tensor:
        sigma = _sigma_batch(sigma, x)
        s = append_dims(sigma, x.ndim)
        c_in = (s**2 + 1) ** -0.5
        out = self.model(x * c_in, self.sigma_to_t(sigma), **cond)
        if self.prediction == "eps":
            return x - s * out
        if self.prediction == "v":
            return x * c_in**2 - (s * c_in) * out
        return out


class KarrasDenoiser(nn.Module):
    """EDM preconditioning (Karras et al. 2022, Table 1, "Ours").

    D(x, sigma) = c_skip x + c_out F(c_in x, c_noise) with c_skip = sd^2 / (sigma^2 + sd^2),
    c_out = sigma sd / sqrt(sigma^2 + sd^2), c_in = 1 / sqrt(sigma^2 + sd^2),
    c_noise = log(sigma) / 4. ``sigma_min``/``sigma_max`` bound the schedules (EDM: 0.002, 80).
    """

    sigmas = None  # continuous: no training table

    def __init__(
        self,
        model: nn.Module,
        sigma_data: float = 0.5,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
    ) -> None:
        super().__init__()
        if sigma_data <= 0 or not (0 < sigma_min < sigma_max):
            raise ValueError("need sigma_data > 0 and 0 < sigma_min < sigma_max")
        self.model = model
        self.sigma_data = sigma_data
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max

    def get_scalings(self, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(c_skip, c_out, c_in) for each sigma."""
        sd2 = self.sigma_data**2
        c_skip = sd2 / (sigma**2 + sd2)
        c_out = sigma * self.sigma_data / (sigma**2 + sd2) ** 0.5
        c_in = 1 / (sigma**2 + sd2) ** 0.5
        return c_skip, c_out, c_in

    def sigma_to_t(self, sigma: Tensor) -> Tensor:
        """c_noise = log(sigma) / 4."""
        return torch.as_tensor(sigma, dtype=torch.float32).log() / 4

    def t_to_sigma(self, t: Tensor) -> Tensor:
        return (torch.as_tensor(t, dtype=torch.float32) * 4).exp()

    def forward(self, x: Tensor, sigma: Tensor, **cond: Any) -> Tensor:
        sigma = _sigma_batch(sigma, x)
        c_skip, c_out, c_in = (append_dims(c, x.ndim) for c in self.get_scalings(sigma))
        return c_skip * x + c_out * self.model(x * c_in, self.sigma_to_t(sigma), **cond)


class FlowDenoiser(nn.Module):
    """Rectified flow / flow matching (Liu et al. 2022; Lipman et al. 2022) as a denoiser.

    The network predicts the velocity v = noise - x0 along x_t = (1 - t) x0 + t noise, called
    as ``model(x_t, t * multiplier, **cond)``. In the sampler's variance-exploding coordinates
    sigma = t / (1 - t) and x = x_t / (1 - t), so every sampler applies unchanged (Euler in
    sigma is exactly Euler in t). ``shift`` applies SD3's resolution shift to the time table;
    ``t_max`` < 1 keeps sigma_max finite (t = 1 would be sigma = inf).
    """

    def __init__(
        self,
        model: nn.Module,
        shift: float = 1.0,
        multiplier: float = 1000.0,
        num_timesteps: int = 1000,
        t_max: float = 0.999,
    ) -> None:
        super().__init__()
        if shift <= 0 or not (0 < t_max < 1):
            raise ValueError("need shift > 0 and 0 < t_max < 1")
        self.model = model
        self.shift = shift
        self.multiplier = multiplier
        ts = torch.arange(1, num_timesteps + 1, dtype=torch.float64) / num_timesteps
        ts = shift_flow_t(ts, shift).clamp(max=t_max)
        self.register_buffer("sigmas", (ts / (1 - ts)).float(), persistent=False)

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def sigma_to_t(self, sigma: Tensor) -> Tensor:
        """The flow time t = sigma / (1 + sigma), in [0, 1)."""
        sigma = torch.as_tensor(sigma, dtype=torch.float32)
        return sigma / (1 + sigma)

    def t_to_sigma(self, t: Tensor) -> Tensor:
        t = torch.as_tensor(t, dtype=torch.float32)
        return t / (1 - t)

    def forward(self, x: Tensor, sigma: Tensor, **cond: Any) -> Tensor:
        sigma = _sigma_batch(sigma, x)
        t = self.sigma_to_t(sigma)
        one_minus_t = append_dims(1 - t, x.ndim)
        x_t = x * one_minus_t
        v = self.model(x_t, t * self.multiplier, **cond)
        return x_t - append_dims(t, x.ndim) * v


class WrappedDenoiser(nn.Module):
    """Base of a denoiser that wraps another one (``self.denoiser``: guidance, ControlNet
    schedules): the noise schedule (sigma range, discrete sigmas, sigma <-> t) is the inner
    one's, so samplers and schedules read it through any stack of wrappers."""

    def __init__(self, denoiser: Any) -> None:
        super().__init__()
        self.denoiser = denoiser

    @property
    def sigma_min(self) -> float:
        return self.denoiser.sigma_min

    @property
    def sigma_max(self) -> float:
        return self.denoiser.sigma_max

    @property
    def sigmas(self) -> Tensor | None:
        return getattr(self.denoiser, "sigmas", None)

    def sigma_to_t(self, sigma: Tensor) -> Tensor:
        return self.denoiser.sigma_to_t(sigma)

    def t_to_sigma(self, t: Tensor) -> Tensor:
        return self.denoiser.t_to_sigma(t)
