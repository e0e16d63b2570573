"""k-diffusion-style samplers: stateless ``sample_*(model, x, sigmas, extra_args=None,
callback=None, disable=None, **options)`` functions over a denoiser, and a name registry."""

from genmodels.diffusion.samplers.common import (
    append_dims,
    get_ancestral_step,
    to_d,
    validate_sigma_range,
    validate_sigmas,
)
from genmodels.diffusion.samplers.dpm_solver import (
    DPMSolver,
    PIDStepSizeController,
    sample_dpm_adaptive,
    sample_dpm_fast,
)
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
from genmodels.diffusion.samplers.lms import linear_multistep_coeff, sample_lms
from genmodels.diffusion.samplers.registry import (
    A1111_ALIASES,
    SAMPLER_INFO,
    SAMPLERS,
    SamplerInfo,
    get_sampler,
    get_sampler_info,
    resolve_sampler,
)

__all__ = [
    "A1111_ALIASES",
    "DPMSolver",
    "PIDStepSizeController",
    "SAMPLERS",
    "SAMPLER_INFO",
    "SamplerInfo",
    "append_dims",
    "get_ancestral_step",
    "get_sampler",
    "get_sampler_info",
    "linear_multistep_coeff",
    "resolve_sampler",
    "sample_dpm_2",
    "sample_dpm_2_ancestral",
    "sample_dpm_adaptive",
    "sample_dpm_fast",
    "sample_dpmpp_2m",
    "sample_dpmpp_2m_sde",
    "sample_dpmpp_2m_sde_heun",
    "sample_dpmpp_2s_ancestral",
    "sample_dpmpp_3m_sde",
    "sample_dpmpp_sde",
    "sample_euler",
    "sample_euler_ancestral",
    "sample_heun",
    "sample_lms",
    "to_d",
    "validate_sigma_range",
    "validate_sigmas",
]
