"""Sampler registry: k-diffusion / ComfyUI names -> sampler functions, A1111 display names as
aliases for (sampler, scheduler) pairs, and per-sampler facts for listings.

    >>> get_sampler("dpmpp_2m")              # the function
    >>> resolve_sampler("DPM++ 2M Karras")   # ("dpmpp_2m", "karras")
"""

from __future__ import annotations

from collections.abc import Callable

from genmodels.diffusion.samplers.common import SamplerInfo
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
from genmodels.diffusion.samplers.extra_registry import EXTRA_SAMPLER_INFO, EXTRA_SAMPLERS
from genmodels.diffusion.samplers.lms import sample_lms

__all__ = [
    "SAMPLERS",
    "SAMPLER_INFO",
    "A1111_ALIASES",
    "SamplerInfo",
    "get_sampler",
    "get_sampler_info",
    "resolve_sampler",
]

SAMPLERS: dict[str, Callable] = {
    "euler": sample_euler,
    "euler_ancestral": sample_euler_ancestral,
    "heun": sample_heun,
    "dpm_2": sample_dpm_2,
    "dpm_2_ancestral": sample_dpm_2_ancestral,
    "lms": sample_lms,
    "dpm_fast": sample_dpm_fast,
    "dpm_adaptive": sample_dpm_adaptive,
    "dpmpp_2s_ancestral": sample_dpmpp_2s_ancestral,
    "dpmpp_sde": sample_dpmpp_sde,
    "dpmpp_2m": sample_dpmpp_2m,
    "dpmpp_2m_sde": sample_dpmpp_2m_sde,
    "dpmpp_2m_sde_heun": sample_dpmpp_2m_sde_heun,
    "dpmpp_3m_sde": sample_dpmpp_3m_sde,
}

_KARRAS = "Karras et al. 2022"
_DPMPP = "DPM-Solver++ (Lu et al. 2022)"
_I = SamplerInfo
SAMPLER_INFO: dict[str, SamplerInfo] = {
    "euler": _I(f"Euler ({_KARRAS})", "ode", 1, 1, "Euler; an SDE with s_churn > 0"),
    "euler_ancestral": _I(f"Euler ({_KARRAS})", "ancestral", 1, 1, "Euler + ancestral noise"),
    "heun": _I(f"Heun ({_KARRAS})", "ode", 2, 2, "Heun; an SDE with s_churn > 0"),
    "dpm_2": _I(f"DPM-2 ({_KARRAS})", "ode", 2, 2, "log-sigma midpoint; SDE with s_churn"),
    "dpm_2_ancestral": _I(f"DPM-2 ({_KARRAS})", "ancestral", 2, 2, "midpoint + ancestral noise"),
    "lms": _I("LMS (k-diffusion)", "ode", 1, 4, "linear multistep in sigma, order 4"),
    "dpm_fast": _I("DPM-Solver (Lu et al. 2022)", "ode", 3, 3, "fixed NFE n", True),
    "dpm_adaptive": _I("DPM-Solver (Lu et al. 2022)", "ode", 3, 3, "DPM-Solver-23, adaptive", True),
    "dpmpp_2s_ancestral": _I(_DPMPP, "ancestral", 2, 2, "2S + ancestral noise"),
    "dpmpp_sde": _I(_DPMPP, "sde", 2, 2, "stochastic 2nd order, Brownian-tree noise"),
    "dpmpp_2m": _I(_DPMPP, "ode", 1, 2, "2M multistep"),
    "dpmpp_2m_sde": _I(_DPMPP, "sde", 1, 2, "2M SDE, midpoint correction"),
    "dpmpp_2m_sde_heun": _I(_DPMPP, "sde", 1, 2, "2M SDE, Heun correction"),
    "dpmpp_3m_sde": _I(_DPMPP, "sde", 1, 3, "3M SDE (globally 2nd order as written)"),
}
del _I


def _as_info(name: str, info: SamplerInfo | dict) -> SamplerInfo:
    """Accept a SamplerInfo or extra_registry's dict(family, kind, calls_per_step, order)."""
    if isinstance(info, SamplerInfo):
        return info
    try:
        calls = info.get("calls_per_step", info.get("model_calls_per_step"))
        return SamplerInfo(
            family=info["family"],
            kind=info["kind"],
            model_calls_per_step=int(calls),
            order=int(info["order"]),
            description=info.get("description", ""),
        )
    except (KeyError, TypeError) as err:
        raise ValueError(f"bad EXTRA_SAMPLER_INFO entry for {name!r}: {info!r}") from err


def _merge_extra_samplers() -> None:
    """Add the samplers beyond k-diffusion (DDIM, DDPM, PLMS, iPNDM, UniPC, DEIS, LCM)."""
    clash = set(EXTRA_SAMPLERS) & set(SAMPLERS)
    if clash:
        raise RuntimeError(f"extra_registry redefines samplers {sorted(clash)}")
    SAMPLERS.update(EXTRA_SAMPLERS)
    for name, info in EXTRA_SAMPLER_INFO.items():
        if name in EXTRA_SAMPLERS:
            SAMPLER_INFO[name] = _as_info(name, info)


_merge_extra_samplers()


def _a1111_aliases() -> dict[str, tuple[str, str | None]]:
    """A1111 (stable-diffusion-webui <= 1.8, still accepted by later versions) display names.

    A name without a schedule suffix leaves the scheduler to the caller (None); "Karras" and
    "Exponential" name the schedules of ``get_sigmas_karras`` / ``get_sigmas_exponential``.
    """
    base = {
        "Euler a": "euler_ancestral",
        "Euler": "euler",
        "LMS": "lms",
        "Heun": "heun",
        "DPM2": "dpm_2",
        "DPM2 a": "dpm_2_ancestral",
        "DPM++ 2S a": "dpmpp_2s_ancestral",
        "DPM++ 2M": "dpmpp_2m",
        "DPM++ SDE": "dpmpp_sde",
        "DPM++ 2M SDE": "dpmpp_2m_sde",
        "DPM++ 2M SDE Heun": "dpmpp_2m_sde_heun",
        "DPM++ 3M SDE": "dpmpp_3m_sde",
        "DPM fast": "dpm_fast",
        "DPM adaptive": "dpm_adaptive",
        "DDIM": "ddim",
        "PLMS": "plms",
        "UniPC": "uni_pc",
        "LCM": "lcm",
    }
    aliases: dict[str, tuple[str, str | None]] = {k: (v, None) for k, v in base.items()}
    karras = ["LMS", "DPM2", "DPM2 a", "DPM++ 2S a", "DPM++ 2M", "DPM++ SDE", "DPM++ 2M SDE"]
    karras += ["DPM++ 2M SDE Heun", "DPM++ 3M SDE"]
    for name in karras:
        aliases[f"{name} Karras"] = (base[name], "karras")
    for name in ["DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 3M SDE"]:
        aliases[f"{name} Exponential"] = (base[name], "exponential")
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
    if key.lower() in SAMPLERS:
        return key.lower(), None
    if key.lower() in _ALIASES_LOWER:
        sampler, scheduler = _ALIASES_LOWER[key.lower()]
        if sampler not in SAMPLERS:
            raise ValueError(f"{name!r} maps to sampler {sampler!r}, which is not available")
        return sampler, scheduler
    raise _unknown(name)


def get_sampler(name: str) -> Callable:
    """The sampler function for a registry name (or an A1111 name; its scheduler is dropped)."""
    return SAMPLERS[resolve_sampler(name)[0]]


def get_sampler_info(name: str) -> SamplerInfo:
    """:class:`SamplerInfo` for a registry name or A1111 name."""
    sampler = resolve_sampler(name)[0]
    if sampler not in SAMPLER_INFO:
        raise ValueError(f"no SamplerInfo recorded for sampler {sampler!r}")
    return SAMPLER_INFO[sampler]
