"""The one sampler table: k-diffusion / ComfyUI names -> the function, its A1111 display names
and the facts a caller needs (kind, order, model calls per step, how to call it).

    >>> get_sampler("dpmpp_2m")              # the function
    >>> resolve_sampler("DPM++ 2M Karras")   # ("dpmpp_2m", "karras")

``SAMPLERS`` (name -> function) and ``A1111_ALIASES`` (display name -> (sampler, scheduler))
are views of ``SAMPLER_INFO``; nothing else lists samplers by name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from genmodels.diffusion.samplers.ddim import (
    sample_ddim,
    sample_ddim_a1111,
    sample_ddpm,
    sample_lcm,
)
from genmodels.diffusion.samplers.dpm_solver import sample_dpm_adaptive, sample_dpm_fast
from genmodels.diffusion.samplers.dpmpp import (
    sample_dpmpp_2m,
    sample_dpmpp_2m_sde,
    sample_dpmpp_2m_sde_heun,
    sample_dpmpp_2s_ancestral,
    sample_dpmpp_3m_sde,
    sample_dpmpp_sde,
)
from genmodels.diffusion.samplers.euler import (
    sample_dpm_2,
    sample_dpm_2_ancestral,
    sample_euler,
    sample_euler_ancestral,
    sample_heun,
)
from genmodels.diffusion.samplers.lms import sample_lms
from genmodels.diffusion.samplers.multistep import (
    sample_deis,
    sample_ipndm,
    sample_ipndm_v,
    sample_plms,
)
from genmodels.diffusion.samplers.unipc import sample_uni_pc, sample_uni_pc_bh2

__all__ = [
    "SAMPLERS",
    "SAMPLER_INFO",
    "A1111_ALIASES",
    "SamplerInfo",
    "get_sampler",
    "get_sampler_info",
    "resolve_sampler",
]

KINDS = ("ode", "sde", "ancestral")
A1111_SCHEDULES = ("karras", "exponential")


@dataclass(frozen=True)
class SamplerInfo:
    """One row of the sampler table: the function, what it is, and how to call it.

    kind: "ode" (deterministic), "sde" (stochastic solver) or "ancestral" (ODE step + fresh
    noise; ``ddim`` only with ``eta > 0``). ``model_calls_per_step`` is per sigma interval (the
    last step to 0 may use fewer; ``plms`` adds one on its first step). ``order``: of the update
    at its full order (before lower-order warm-up or final steps).

    a1111: the A1111 display name (stable-diffusion-webui <= 1.8, still accepted later);
    ``a1111_schedules`` the schedules A1111 offers as "<name> Karras" / "<name> Exponential".
    uses_sigma_range: called as ``fn(model, x, sigma_min, sigma_max, ...)`` instead of ``sigmas``.
    steps_as_n: with ``uses_sigma_range``, the step count is passed as ``n`` (``dpm_fast``).
    a1111_scheduler: the schedule A1111's name always uses (its timestep samplers ignore the
    schedule type). vp_start: A1111's timestep samplers start txt2img from unit noise in the
    variance-preserving chain, ``noise * sqrt(1 + sigma_0^2)`` in sigma space.
    discard_penultimate_sigma: schedule one step more and drop the next-to-last sigma, as A1111
    ("discard_next_to_last_sigma", the second-order DPM2) and ComfyUI (DPM2, UniPC) do, because
    the last step to sigma=0 would waste the second model call.
    """

    fn: Callable[..., Tensor]
    family: str
    kind: str
    model_calls_per_step: int
    order: int
    description: str = ""
    a1111: str | None = None
    a1111_schedules: tuple[str, ...] = ()
    uses_sigma_range: bool = False
    steps_as_n: bool = False
    discard_penultimate_sigma: bool = False
    a1111_scheduler: str | None = None  # the schedule the A1111 name implies (None: caller's)
    vp_start: bool = False  # txt2img starts from unit VP noise: x = noise * sqrt(1 + sigma_0^2)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be 'ode', 'sde' or 'ancestral', got {self.kind!r}")
        if self.model_calls_per_step < 1 or self.order < 1:
            raise ValueError("model_calls_per_step and order must be >= 1")
        if not set(self.a1111_schedules) <= set(A1111_SCHEDULES):
            raise ValueError(f"a1111_schedules must be among {A1111_SCHEDULES}")
        if self.a1111_schedules and self.a1111 is None:
            raise ValueError("a1111_schedules needs an a1111 name")
        if self.steps_as_n and not self.uses_sigma_range:
            raise ValueError("steps_as_n only applies to samplers with uses_sigma_range")

    @property
    def brownian_noise(self) -> bool:
        """SDE solvers get Brownian-tree noise (k-diffusion's default for them), so the result
        barely changes with the step count; ancestral samplers get fresh noise per step."""
        return self.kind == "sde"


_KARRAS = "Karras et al. 2022"
_DPMPP = "DPM-Solver++ (Lu et al. 2022)"
_DPM = "DPM-Solver (Lu et al. 2022)"
_UNIPC = "UniPC (Zhao et al. 2023)"
_IPNDM = "iPNDM (Zhang & Chen 2022)"
_K = ("karras",)
_KE = ("karras", "exponential")
_I = SamplerInfo
SAMPLER_INFO: dict[str, SamplerInfo] = {
    # k-diffusion
    "euler": _I(sample_euler, f"Euler ({_KARRAS})", "ode", 1, 1,
                "an SDE with s_churn > 0", "Euler"),
    "euler_ancestral": _I(sample_euler_ancestral, f"Euler ({_KARRAS})", "ancestral", 1, 1,
                          "Euler + ancestral noise", "Euler a"),
    "heun": _I(sample_heun, f"Heun ({_KARRAS})", "ode", 2, 2,
               "an SDE with s_churn > 0", "Heun"),
    "dpm_2": _I(sample_dpm_2, f"DPM-2 ({_KARRAS})", "ode", 2, 2,
                "log-sigma midpoint; SDE with s_churn", "DPM2", _K,
                discard_penultimate_sigma=True),
    "dpm_2_ancestral": _I(sample_dpm_2_ancestral, f"DPM-2 ({_KARRAS})", "ancestral", 2, 2,
                          "midpoint + ancestral noise", "DPM2 a", _K,
                          discard_penultimate_sigma=True),
    "lms": _I(sample_lms, "LMS (k-diffusion)", "ode", 1, 4,
              "linear multistep in sigma, order 4", "LMS", _K),
    "dpm_fast": _I(sample_dpm_fast, _DPM, "ode", 3, 3, "fixed NFE n", "DPM fast",
                   uses_sigma_range=True, steps_as_n=True),
    "dpm_adaptive": _I(sample_dpm_adaptive, _DPM, "ode", 3, 3, "DPM-Solver-23, adaptive",
                       "DPM adaptive", uses_sigma_range=True),
    "dpmpp_2s_ancestral": _I(sample_dpmpp_2s_ancestral, _DPMPP, "ancestral", 2, 2,
                             "2S + ancestral noise", "DPM++ 2S a", _K),
    "dpmpp_sde": _I(sample_dpmpp_sde, _DPMPP, "sde", 2, 2,
                    "stochastic 2nd order, Brownian-tree noise", "DPM++ SDE", _K),
    "dpmpp_2m": _I(sample_dpmpp_2m, _DPMPP, "ode", 1, 2, "2M multistep", "DPM++ 2M", _K),
    "dpmpp_2m_sde": _I(sample_dpmpp_2m_sde, _DPMPP, "sde", 1, 2,
                       "2M SDE, midpoint correction", "DPM++ 2M SDE", _KE),
    "dpmpp_2m_sde_heun": _I(sample_dpmpp_2m_sde_heun, _DPMPP, "sde", 1, 2,
                            "2M SDE, Heun correction", "DPM++ 2M SDE Heun", _KE),
    "dpmpp_3m_sde": _I(sample_dpmpp_3m_sde, _DPMPP, "sde", 1, 3,
                       "3M SDE (globally 2nd order as written)", "DPM++ 3M SDE", _KE),
    # beyond k-diffusion (ComfyUI / diffusers names)
    "ddim": _I(sample_ddim, "DDIM (Song et al. 2020)", "ode", 1, 1,
               "DDIM in sigma space down to sigma 0 (ComfyUI ddim)"),
    "ddim_a1111": _I(sample_ddim_a1111, "DDIM (Song et al. 2020)", "ode", 1, 1,
                     "A1111's DDIM: ddim_uniform timesteps, ends at alphas_cumprod[1]",
                     a1111="DDIM", a1111_scheduler="ddim_uniform", vp_start=True),
    "ddpm": _I(sample_ddpm, "DDPM (Ho et al. 2020)", "ancestral", 1, 1),
    "lcm": _I(sample_lcm, "LCM (Luo et al. 2023)", "ancestral", 1, 1, a1111="LCM"),
    "plms": _I(sample_plms, "PNDM (Liu et al. 2022)", "ode", 1, 4, a1111="PLMS"),
    "ipndm": _I(sample_ipndm, _IPNDM, "ode", 1, 4),
    "ipndm_v": _I(sample_ipndm_v, _IPNDM, "ode", 1, 4),
    "deis": _I(sample_deis, "DEIS (Zhang & Chen 2022)", "ode", 1, 3),
    "uni_pc": _I(sample_uni_pc, _UNIPC, "ode", 1, 3, a1111="UniPC",
                 discard_penultimate_sigma=True),
    "uni_pc_bh2": _I(sample_uni_pc_bh2, _UNIPC, "ode", 1, 3, discard_penultimate_sigma=True),
}  # fmt: skip
del _I

SAMPLERS: dict[str, Callable[..., Tensor]] = {name: i.fn for name, i in SAMPLER_INFO.items()}


def _a1111_aliases() -> dict[str, tuple[str, str | None]]:
    """A1111 display name -> (sampler, scheduler). A name without a schedule suffix leaves the
    scheduler to the caller (None); " Karras" / " Exponential" name the schedules of
    ``get_sigmas_karras`` / ``get_sigmas_exponential``."""
    aliases: dict[str, tuple[str, str | None]] = {}
    for name, info in SAMPLER_INFO.items():
        if info.a1111 is None:
            continue
        aliases[info.a1111] = (name, info.a1111_scheduler)
        for schedule in info.a1111_schedules:
            aliases[f"{info.a1111} {schedule.capitalize()}"] = (name, schedule)
    return aliases


A1111_ALIASES: dict[str, tuple[str, str | None]] = _a1111_aliases()
_ALIASES_LOWER = {k.lower(): v for k, v in A1111_ALIASES.items()}


def _unknown(name: str) -> ValueError:
    return ValueError(
        f"unknown sampler {name!r}; valid names: {', '.join(SAMPLERS)}; "
        f"A1111 names: {', '.join(A1111_ALIASES)}"
    )


def resolve_sampler(name: str) -> tuple[str, str | None]:
    """Registry name or A1111 display name (case-insensitive) -> ``(sampler, scheduler)``."""
    if not isinstance(name, str):
        raise ValueError(f"sampler name must be a string, got {type(name).__name__}")
    key = name.strip()
    if key in SAMPLERS:
        return key, None
    if key in A1111_ALIASES:  # before the case-insensitive names: "DDIM" is A1111's, "ddim" ours
        return A1111_ALIASES[key]
    if key.lower() in SAMPLERS:
        return key.lower(), None
    if key.lower() in _ALIASES_LOWER:
        return _ALIASES_LOWER[key.lower()]
    raise _unknown(name)


def get_sampler(name: str) -> Callable[..., Tensor]:
    """The sampler function for a registry name (or an A1111 name; its scheduler is dropped)."""
    return SAMPLERS[resolve_sampler(name)[0]]


def get_sampler_info(name: str) -> SamplerInfo:
    """:class:`SamplerInfo` for a registry name or A1111 name."""
    return SAMPLER_INFO[resolve_sampler(name)[0]]
