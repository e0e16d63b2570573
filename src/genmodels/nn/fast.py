"""When the CPU bf16 inference fast paths apply, and a switch to turn them off.

The fast paths are rewrites that compute the same sums in a cheaper layout (e.g. the
SpatialTransformer's 1x1 convs run as matmuls on the channels-last token matrix). They are taken
only for CPU bf16 channels-last inference with no autograd graph being recorded and outside
``torch.compile`` tracing; fp32 (the parity reference), CUDA and training keep the plain path.
``set_fast_paths(False)`` switches them off process-wide, for comparisons and tests.

Measured and dropped (benchmarks/unet_speed.py, same process, interleaved with diffusers): oneDNN
``mkldnn._linear_pointwise`` with the bias / GELU fused into the matmul. It is faster than
``F.linear`` in isolated calls but slower inside the SD 1.5 UNet step (1.9-2.6 s vs 1.7 s for all
linears), as the unpacked bf16 weights are reordered on every call.

Also measured (SD 1.5 UNet, 64x64 latent, bf16 channels-last, 2 cores) and dropped:
``torch.compile`` with inductor freezing, 2.68-2.75 s/step against 2.95 s eager after a 97 s
compile (a 20-step CFG job loses time); for the 8x4096x40 self-attention, zero-padding the heads
to 48 or 64 channels (217 / 226 ms against 166 ms), chunked bmm + softmax + bmm (304-346 ms
against 195 ms) and compiled ``flex_attention`` (731 ms). torch's CPU flash SDPA runs that
attention at about 130 GFLOP/s in bf16 and fp32 alike (a quarter of the bf16 matmul rate): the
five 4096-token attentions are about 0.85 s of the step, the largest gap to the floor.
"""

from __future__ import annotations

import torch
from torch import Tensor

_ENABLED = True


def set_fast_paths(enabled: bool) -> None:
    """Enable or disable the fast paths process-wide (the plain path is the reference)."""
    global _ENABLED
    _ENABLED = bool(enabled)


def fast_paths_enabled() -> bool:
    """Whether the fast paths are enabled (they still apply only to eligible calls)."""
    return _ENABLED


def fast_bf16_inference(x: Tensor, *params: Tensor) -> bool:
    """True when a fast path may run on x (B, C, H, W) with ``params``: CPU, bf16, channels-last,
    no autograd graph recorded, not under ``torch.compile`` tracing, and fast paths enabled."""
    if not _ENABLED or x.device.type != "cpu" or x.dtype != torch.bfloat16:
        return False
    if not x.is_contiguous(memory_format=torch.channels_last):
        return False
    if any(p.dtype != torch.bfloat16 for p in params):
        return False
    if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in params)):
        return False
    return not torch.compiler.is_compiling()
