"""Per-step prompt conditioning in the CFG denoiser (A1111 prompt editing and alternation).

``schedule_conditioning`` turns a prompt and a negative prompt into two
``ConditioningSchedule``s: the distinct prompts of ``prompt_schedule`` (each encoded once, all in
one batch, padded to the same number of 77-token chunks with empty chunks as A1111 pads cond and
uncond) and the step up to which each is used. ``ScheduledCFG`` is the classifier-free guidance
denoiser whose cond and uncond follow the step: as A1111's ``CFGDenoiser``, it counts its own
calls, and ``schedule_length`` gives the length of the schedule those calls walk through: the
steps, twice the steps for the samplers that call the model twice a step (A1111's
``second_order`` samplers: Heun, DPM2, DPM2 a, DPM++ 2S a, DPM++ SDE; ``SamplerData.total_steps``).

``clip_skip(encoder, n)`` is A1111's "Clip skip" for the duration of a ``with`` block: the
hidden state ``n`` layers from the end, with the final layer norm, for SD 1.x's CLIP-L (A1111
applies it to SD 1.x only: SD 2.x and SDXL already take the penultimate layer).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from genmodels.diffusion.denoisers import WrappedDenoiser
from genmodels.diffusion.guidance import CFGDenoiser
from genmodels.diffusion.samplers.registry import SAMPLER_INFO, resolve_sampler
from genmodels.models.family import ModelFamily
from genmodels.models.text.encoders import TextEncoder
from genmodels.pipelines.conditioning import SDXLSizeConditioning, encode_prompts, sdxl_vector
from genmodels.pipelines.prompt_schedule import ScheduleEntry, prompt_schedule, schedule_index

__all__ = [
    "ConditioningSchedule", "ScheduledCFG", "clip_skip", "clip_skip_applies",
    "schedule_conditioning", "schedule_length",
]  # fmt: skip


@dataclass
class ConditioningSchedule:
    """Denoiser keyword arguments per step range: ``conds[k]`` up to step ``schedule[k]``."""

    schedule: list[ScheduleEntry]
    conds: list[dict[str, Tensor]]  # each (1, ...) : one prompt

    def at(self, step: int) -> dict[str, Tensor]:
        return self.conds[schedule_index(self.schedule, step)]

    @property
    def constant(self) -> bool:
        return len({e.text for e in self.schedule}) == 1


def _unique(texts: list[str]) -> list[str]:
    return list(dict.fromkeys(texts))


@torch.no_grad()
def schedule_conditioning(
    encoder: TextEncoder, model_type: ModelFamily, prompt: str, negative_prompt: str,
    steps: int, size: tuple[int, int], sdxl: SDXLSizeConditioning | None = None,
    hires_steps: int | None = None,
) -> tuple[ConditioningSchedule, ConditioningSchedule]:  # fmt: skip
    """(cond, uncond) schedules; ``size`` = generated (height, width), ``hires_steps`` for the
    second pass of a hires fix (``prompt_schedule``'s step offsets)."""
    pos = prompt_schedule(prompt, steps, hires_steps)
    neg = prompt_schedule(negative_prompt, steps, hires_steps)
    texts_p, texts_n = _unique([e.text for e in pos]), _unique([e.text for e in neg])
    context, pooled = encode_prompts(encoder, [*texts_p, *texts_n])
    sdxl_model = model_type.startswith("sdxl")
    if sdxl_model and pooled is None:
        raise ValueError("an SDXL model needs a text encoder with a pooled output")
    sdxl = sdxl or SDXLSizeConditioning(original_size=size)

    def cond(i: int, negative: bool) -> dict[str, Tensor]:
        c = {"context": context[i : i + 1]}
        if sdxl_model:
            c["y"] = sdxl_vector(pooled[i : i + 1], model_type, sdxl, size, negative=negative)
        return c

    by_text_p = {t: cond(i, False) for i, t in enumerate(texts_p)}
    by_text_n = {t: cond(len(texts_p) + i, True) for i, t in enumerate(texts_n)}
    return (
        ConditioningSchedule(pos, [by_text_p[e.text] for e in pos]),
        ConditioningSchedule(neg, [by_text_n[e.text] for e in neg]),
    )


class ScheduledCFG(WrappedDenoiser):
    """CFG (``CFGDenoiser``) whose cond / uncond are those of the current step of the schedule.

    Called as a denoiser with the per-run keyword arguments (``c_concat`` of inpainting models);
    ``uncond_extra`` holds their unconditional counterparts. Each call is one step of the
    schedule (A1111 counts model calls); ``step`` starts at ``start_step`` (a refiner
    continuing a base run)."""

    def __init__(
        self, denoiser: Callable[..., Tensor], cond: ConditioningSchedule,
        uncond: ConditioningSchedule, scale: float, rescale: float = 0.0,
        uncond_extra: dict[str, Tensor] | None = None, start_step: int = 0,
        sigma_range: tuple[float, float] | None = None,
    ) -> None:  # fmt: skip
        super().__init__(denoiser)
        self.cond, self.uncond = cond, uncond
        self.scale, self.rescale, self.sigma_range = scale, rescale, sigma_range
        self.uncond_extra = uncond_extra or {}
        self.step = start_step
        self._cfg: dict[int, CFGDenoiser] = {}  # one per distinct uncond entry

    def forward(self, x: Tensor, sigma: Tensor, **extra: Any) -> Tensor:
        b = x.shape[0]
        cond = {k: v.expand(b, *v.shape[1:]) for k, v in self.cond.at(self.step).items()}
        k = schedule_index(self.uncond.schedule, self.step)
        if k not in self._cfg:
            uncond = {**self.uncond.conds[k], **self.uncond_extra}
            self._cfg[k] = CFGDenoiser(self.denoiser, uncond, self.scale, self.rescale,
                                       self.sigma_range)  # fmt: skip
        out = self._cfg[k](x, sigma, **cond, **extra)
        self.step += 1
        return out


def schedule_length(sampler: str, steps: int) -> int:
    """Steps of the prompt schedule for ``steps`` sampler steps: model calls, as A1111 counts
    them (twice the steps for its ``second_order`` samplers, our two-call samplers)."""
    return (
        steps * 2 if SAMPLER_INFO[resolve_sampler(sampler)[0]].model_calls_per_step == 2 else steps
    )


def clip_skip_applies(model_type: ModelFamily) -> bool:
    """A1111 applies "Clip skip" to SD 1.x's CLIP-L only."""
    return model_type == "sd1"


@contextlib.contextmanager
def clip_skip(encoder: TextEncoder, n: int, model_type: ModelFamily) -> Iterator[None]:
    """A1111 "Clip skip" ``n`` (1 = last layer) while the block runs; no-op where A1111 ignores
    it (SD 2.x / XL) and for ``n == 1``."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"clip_skip must be an integer >= 1 (1 = last layer), got {n!r}")
    if n == 1 or not clip_skip_applies(model_type):
        yield
        return
    saved = [e.config for e in encoder.embedders]
    try:
        for e in encoder.embedders:
            layers = e.config.text.num_hidden_layers
            if n > layers:
                raise ValueError(f"clip_skip {n} is more than the {layers} text encoder layers")
            e.config = replace(e.config, layer=-n)
        yield
    finally:
        for e, cfg in zip(encoder.embedders, saved):
            e.config = cfg
