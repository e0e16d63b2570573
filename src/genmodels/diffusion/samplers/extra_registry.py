"""Names of the samplers beyond k-diffusion (ComfyUI / diffusers names), for the main registry.

``EXTRA_SAMPLER_INFO[name]``:

* ``family``: the paper / method the sampler implements.
* ``kind``: ``"ode"`` (deterministic), ``"ancestral"`` (fresh noise each step, takes
  ``s_noise`` and ``noise_sampler``; ``ddim`` only when ``eta > 0``) or ``"sde"``.
* ``calls_per_step``: model calls per step (``plms`` adds one on its first step).
* ``order``: order of the update formula at its full order (before any lower-order warm
  start or lower-order final steps).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from genmodels.diffusion.samplers.ddim import sample_ddim, sample_ddpm, sample_lcm
from genmodels.diffusion.samplers.multistep import (
    sample_deis,
    sample_ipndm,
    sample_ipndm_v,
    sample_plms,
)
from genmodels.diffusion.samplers.unipc import sample_uni_pc, sample_uni_pc_bh2

__all__ = ["EXTRA_SAMPLERS", "EXTRA_SAMPLER_INFO"]

EXTRA_SAMPLERS: dict[str, Callable[..., Tensor]] = {
    "ddim": sample_ddim,
    "ddpm": sample_ddpm,
    "lcm": sample_lcm,
    "plms": sample_plms,
    "ipndm": sample_ipndm,
    "ipndm_v": sample_ipndm_v,
    "deis": sample_deis,
    "uni_pc": sample_uni_pc,
    "uni_pc_bh2": sample_uni_pc_bh2,
}

EXTRA_SAMPLER_INFO: dict[str, dict] = {
    "ddim": dict(family="DDIM (Song et al. 2020)", kind="ode", calls_per_step=1, order=1),
    "ddpm": dict(family="DDPM (Ho et al. 2020)", kind="ancestral", calls_per_step=1, order=1),
    "lcm": dict(family="LCM (Luo et al. 2023)", kind="ancestral", calls_per_step=1, order=1),
    "plms": dict(family="PNDM (Liu et al. 2022)", kind="ode", calls_per_step=1, order=4),
    "ipndm": dict(family="iPNDM (Zhang & Chen 2022)", kind="ode", calls_per_step=1, order=4),
    "ipndm_v": dict(family="iPNDM (Zhang & Chen 2022)", kind="ode", calls_per_step=1, order=4),
    "deis": dict(family="DEIS (Zhang & Chen 2022)", kind="ode", calls_per_step=1, order=3),
    "uni_pc": dict(family="UniPC (Zhao et al. 2023)", kind="ode", calls_per_step=1, order=3),
    "uni_pc_bh2": dict(family="UniPC (Zhao et al. 2023)", kind="ode", calls_per_step=1, order=3),
}
