"""The ``/sdapi/v1/samplers`` and ``/sdapi/v1/schedulers`` lists, from the one sampler table
(``diffusion/samplers/registry.py``) and the scheduler table (``diffusion/schedules.py``).

As A1111 >= 1.9 the samplers are listed without schedule suffixes ("DPM++ 2M", the schedule is
the separate ``scheduler`` field); the older "DPM++ 2M Karras" names are still accepted. A sampler
with an A1111 display name is listed under it, the others under their registry name; the
registry name is an alias. Every name listed is accepted back in ``sampler_name`` /
``scheduler``.
"""

from __future__ import annotations

from genmodels.diffusion.samplers.registry import SAMPLER_INFO
from genmodels.diffusion.schedules import A1111_SCHEDULER_ALIASES, SCHEDULERS, resolve_scheduler

__all__ = ["sampler_items", "scheduler_items"]

# schedules computed from (sigma_min, sigma_max) alone; the others read the model's sigmas
_RANGE_ONLY = {"karras", "exponential", "polyexponential", "kl_optimal"}
_RHO = {"karras": 7.0, "polyexponential": 1.0}  # their default rho (Karras et al. 2022)


def sampler_items() -> list[dict]:
    """A1111 ``SamplerItem``s: name, aliases, options (A1111's option names, as strings)."""
    items = []
    for name, info in SAMPLER_INFO.items():
        options = {}
        if info.discard_penultimate_sigma:
            options["discard_next_to_last_sigma"] = "True"
        if info.model_calls_per_step > 1:
            options["second_order"] = "True"
        if info.kind != "ode":
            options["uses_ensd"] = "True"
        items.append(dict(name=info.a1111 or name, aliases=[name], options=options))
    return items


def _accepted(name: str) -> bool:
    try:
        return resolve_scheduler(name) is not None
    except ValueError:
        return False


def scheduler_items() -> list[dict]:
    """A1111 ``SchedulerItem``s: "automatic" (the sampler's own schedule) first, then each
    scheduler under its registry name with its A1111 label and other names as aliases."""
    labels: dict[str, list[str]] = {}
    for label, name in A1111_SCHEDULER_ALIASES.items():
        if label not in ("Automatic", "Uniform"):
            labels.setdefault(name, []).append(label)
    items = [dict(name="automatic", label="Automatic", aliases=None, default_rho=None,
                  need_inner_model=None)]  # fmt: skip
    for name in SCHEDULERS:
        names = labels.get(name) or [name]
        aliases = [n for n in {n.lower() for n in names} if n != name and _accepted(n)] or None
        items.append(dict(name=name, label=names[0], aliases=aliases,
                          default_rho=_RHO.get(name, -1.0),
                          need_inner_model=name not in _RANGE_ONLY))  # fmt: skip
    return items
