"""Writing a safetensors file one tensor at a time (peak memory: one tensor, not the model).

The format (huggingface/safetensors): an 8-byte little-endian header length, a JSON header
``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}`` padded
with spaces to a multiple of 8 bytes, then the tensors' bytes back to back in header order. The
shapes and dtypes are known up front, so the header is written first and each tensor is produced,
written and dropped in turn. The file is written atomically (``atomic.write_atomic``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor

from genmodels.checkpoints.atomic import write_atomic

__all__ = ["DTYPE_NAMES", "write_safetensors_streaming"]

DTYPE_NAMES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint8: "U8", torch.bool: "BOOL",
}  # fmt: skip


def _header(entries: Sequence[tuple[str, tuple[int, ...], torch.dtype]],
            metadata: Mapping[str, str]) -> bytes:  # fmt: skip
    header: dict[str, object] = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for key, shape, dtype in entries:
        if dtype not in DTYPE_NAMES:
            raise ValueError(f"{key}: dtype {dtype} cannot be written to safetensors")
        size = dtype.itemsize
        for dim in shape:
            size *= dim
        header[key] = {"dtype": DTYPE_NAMES[dtype], "shape": list(shape),
                       "data_offsets": [offset, offset + size]}  # fmt: skip
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    return raw + b" " * (-len(raw) % 8)


def write_safetensors_streaming(
    path: str | os.PathLike,
    entries: Sequence[tuple[str, tuple[int, ...], torch.dtype]],
    produce: Callable[[str], Tensor],
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write ``entries`` (key, shape, dtype) with the tensors ``produce(key)`` returns, in order;
    a produced tensor of another shape or dtype is an error (the header is already written)."""
    header = _header(entries, metadata or {})

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.write(len(header).to_bytes(8, "little"))
            f.write(header)
            for key, shape, dtype in entries:
                t = produce(key)
                if tuple(t.shape) != tuple(shape) or t.dtype != dtype:
                    raise ValueError(
                        f"{key}: produced {tuple(t.shape)} {t.dtype}, the header says "
                        f"{tuple(shape)} {dtype}"
                    )
                data = t.detach().contiguous().cpu().reshape(-1)
                if data.numel():
                    f.write(memoryview(data.view(torch.uint8).numpy()))

    write_atomic(path, write)
