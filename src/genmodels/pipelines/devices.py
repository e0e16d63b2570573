"""Device and dtype names -> ``torch.device`` / floating ``torch.dtype``, checked before loading.

    resolve_device("cuda")        # ValueError on a machine without CUDA, before any work
    resolve_dtype("fp16", dev)    # also "float16", "half", torch.float16; "auto" picks one

Only floating dtypes are accepted: the models' weights and activations are floating point
(``torch.int8`` would truncate every weight to zero or garbage). ``auto`` is what A1111 does by
default: fp16 on CUDA; on a CPU bf16 where the CPU has native bf16 (AMX / AVX512-BF16), else fp32.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

__all__ = ["DTYPE_NAMES", "cpu_supports_bf16", "resolve_device", "resolve_dtype"]

DTYPE_NAMES: dict[str, torch.dtype] = {
    "fp32": torch.float32, "float32": torch.float32, "float": torch.float32,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp64": torch.float64, "float64": torch.float64, "double": torch.float64,
}  # fmt: skip
_DEVICE_TYPES = ("cpu", "cuda", "mps")


def cpu_supports_bf16(cpuinfo: str | None = None) -> bool:
    """AMX-BF16 or AVX512-BF16 in /proc/cpuinfo's flags (False where it cannot be read)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    flags = set(re.findall(r"[\w.]+", " ".join(re.findall(r"^flags\s*:(.*)$", cpuinfo, re.M))))
    return bool(flags & {"amx_bf16", "avx512_bf16"})


def resolve_dtype(
    dtype: str | torch.dtype,
    device: torch.device | str = "cpu",
    cpuinfo: str | None = None,
) -> torch.dtype:
    """A floating ``torch.dtype`` from a dtype or a name (``auto``, ``fp16``, ``float16``, ...)."""
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating dtype ({_valid()}), got {dtype}")
        return dtype
    if not isinstance(dtype, str):
        raise ValueError(f"dtype must be a torch.dtype or a name ({_valid()}), got {dtype!r}")
    name = dtype.strip().lower().removeprefix("torch.")
    if name == "auto":
        if torch.device(device).type == "cuda":
            return torch.float16
        return torch.bfloat16 if cpu_supports_bf16(cpuinfo) else torch.float32
    if name not in DTYPE_NAMES:
        raise ValueError(f"unknown dtype {dtype!r}; valid: auto, {_valid()}")
    return DTYPE_NAMES[name]


def _valid() -> str:
    return ", ".join(DTYPE_NAMES)


def resolve_device(name: str | torch.device | None) -> torch.device:
    """``None``: cuda if available, else cpu. A device this machine lacks is a ValueError."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(
            f"unknown device {name!r}; valid: cpu, cuda, cuda:N, mps"
        ) from None  # torch's own message lists two dozen backends
    if device.type not in _DEVICE_TYPES:
        raise ValueError(f"unsupported device {name!r}; valid: cpu, cuda, cuda:N, mps")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r}: CUDA is not available on this machine; use cpu")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(f"device {name!r}: this machine has {count} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {name!r}: MPS is not available on this machine; use cpu")
    return device
