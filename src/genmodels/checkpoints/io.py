"""Reading and writing checkpoint files: safetensors (memory-mapped) and pickled ``.ckpt``.

* ``.safetensors``: ``safetensors.torch.load_file`` maps the file; tensors are views of the
  mapping until something converts them, so loading costs no full extra copy in RAM.
* ``.ckpt`` / ``.pt`` / ``.pth`` / ``.bin``: ``torch.load(weights_only=True, mmap=True)``; the
  restricted unpickler never runs code from the file. Lightning checkpoints keep the weights under
  a top-level ``state_dict``, which is unwrapped; their pickled ``ModelCheckpoint`` callback and
  numpy scalars / arrays in their bookkeeping (callback scores, loop state) are read into inert
  placeholders (never tensors, so never weights). Anything else beyond tensors and containers is
  refused, naming the global it needs.
* Only regular files are opened (``check_regular_file``): a folder, FIFO or device is refused
  by its ``stat`` before any ``open`` (a FIFO would block), and a file that cannot be opened is
  reported with its real OS error (not found, permission denied), never as "corrupt".
* Writes go to a temporary file in the destination folder and are moved into place with
  ``os.replace``, so an interrupted save never leaves a half-written file under the final name.
  Nothing here ever writes to a source file.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import re
import stat
import zipfile
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import BinaryIO

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from .atomic import write_atomic

StateDict = dict[str, Tensor]

SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read or does not fit any known model."""


_FILE_KINDS = (
    (stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)  # fmt: skip


def os_error_message(path: str | os.PathLike, exc: OSError, what: str = "file") -> str:
    """One line naming ``path`` and the real OS error (not found, permission denied, ...)."""
    reasons = {errno.ENOENT: f"no such {what} (file not found)",
               errno.EACCES: "permission denied", errno.EPERM: "permission denied",
               errno.EISDIR: f"is a folder, not a {what}"}  # fmt: skip
    reason = reasons.get(exc.errno or 0, exc.strerror or str(exc))
    return f"{path}: {reason}"


def check_regular_file(path: str | os.PathLike, what: str = "checkpoint file") -> None:
    """Raise ``CheckpointError`` with the real reason unless ``path`` is a readable regular
    file. Checked on ``stat`` (so a FIFO is never opened, which would block) and ``access``."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise CheckpointError(os_error_message(path, exc, what)) from exc
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _FILE_KINDS if test(mode)), "not a regular file")
        raise CheckpointError(f"{path}: not a regular file ({kind}); expected a {what}")
    if not os.access(path, os.R_OK):
        raise CheckpointError(f"{path}: permission denied")


def _is_safetensors(path: Path) -> bool:
    if path.suffix.lower() in SAFETENSORS_SUFFIXES:
        return True
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return False
    # Unknown suffix: safetensors starts with an 8-byte header length then '{'.
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The string metadata of a safetensors file ({} for pickled checkpoints)."""
    path = Path(path)
    check_regular_file(path)
    if not _is_safetensors(path):
        return {}
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(_corrupt(path, exc)) from exc


def load_state_dict(path: str | os.PathLike) -> StateDict:
    """All tensors of a checkpoint file, memory-mapped where the format allows it.

    Raises ``CheckpointError`` naming the file when it is missing, truncated or corrupt, or when
    a pickled checkpoint needs globals outside torch's weights-only allow-list.
    """
    path = Path(path)
    check_regular_file(path)
    if _is_safetensors(path):
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, RuntimeError) as exc:
            raise CheckpointError(_corrupt(path, exc)) from exc
    return _load_pickle(path)


_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}  # fmt: skip


def _read_exact(f: BinaryIO, view: memoryview, path: Path) -> None:
    done = 0
    while done < len(view):
        n = f.readinto(view[done:])
        if not n:
            raise CheckpointError(f"{path}: file ends early (truncated file?)")
        done += n


def stream_safetensors(
    path: str | os.PathLike,
    dtype: torch.dtype,
    keys: Collection[str] | None = None,
    chunk_bytes: int = 4 << 20,
) -> StateDict:
    """Read a safetensors file converting floating tensors to ``dtype`` on the way in.

    The bytes go through one small reused buffer straight into the converted tensors, so the
    peak memory is the converted weights plus ``chunk_bytes`` (a memory-mapped read would also
    keep the touched file pages resident). Tensors already in ``dtype`` are read in place.
    ``keys`` restricts the read to those tensors.
    """
    path = Path(path)
    check_regular_file(path)
    try:
        with open(path, "rb", buffering=0) as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
            base = 8 + n
            entries = sorted(
                (info["data_offsets"][0], key, info)
                for key, info in header.items()
                if key != "__metadata__" and (keys is None or key in keys)
            )
            buf = torch.empty(chunk_bytes, dtype=torch.uint8)
            threads = torch.get_num_threads()
            # Chunk conversions are memory-bound; one intra-op thread avoids OpenMP start-up per
            # chunk, which on a busy 2-core machine made streaming 2.6x slower (10.2 s vs 3.9 s).
            torch.set_num_threads(1)
            try:
                out = {key: _stream_one(f, base + start, info, dtype, buf, path)
                       for start, key, info in entries}  # fmt: skip
            finally:
                torch.set_num_threads(threads)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointError(_corrupt(path, exc)) from exc
    return out


def _stream_one(f: BinaryIO, offset: int, info: dict, dtype: torch.dtype, buf: Tensor,
                path: Path) -> Tensor:  # fmt: skip
    src = _SAFETENSORS_DTYPES[info["dtype"]]
    target = dtype if src.is_floating_point else src
    out = torch.empty(info["shape"], dtype=target)
    f.seek(offset)
    if target == src:  # no conversion: read straight into the tensor
        _read_exact(f, memoryview(out.view(-1).view(torch.uint8).numpy()), path)
        return out
    flat, size = out.view(-1), src.itemsize
    per_chunk = len(buf) // size
    # Between two 16-bit float formats, going through a cache-sized fp32 scratch uses torch's
    # vectorised fp16->fp32 and fp32->bf16 kernels: 2.4x faster than the direct copy_ here.
    # (fp16 -> fp32 is exact, so the result is bit-identical to ``.to(dtype)``.)
    via_fp32 = src.is_floating_point and torch.float32 not in (src, target)
    scratch = torch.empty(per_chunk, dtype=torch.float32) if via_fp32 else None
    for start in range(0, flat.numel(), per_chunk):
        n = min(per_chunk, flat.numel() - start)
        chunk = buf[: n * size]
        _read_exact(f, memoryview(chunk.numpy()), path)
        if scratch is not None:
            flat[start : start + n].copy_(scratch[:n].copy_(chunk.view(src)))
        else:
            flat[start : start + n].copy_(chunk.view(src))
    return out


def _corrupt(path: Path, exc: BaseException) -> str:
    """The message for a file that opened but did not parse; an OS error is reported as such."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return os_error_message(path, exc, "checkpoint file")
    try:
        size = f"size {path.stat().st_size} bytes"
    except OSError:
        size = "size unknown"
    return f"{path}: not a readable checkpoint (truncated or corrupt file? {size}): {exc}"


class _Inert:
    """Stands in for Lightning bookkeeping objects pickled into training checkpoints (the
    ``ModelCheckpoint`` callback state of the original SD and taming ``.ckpt`` files, numpy
    scalars and dtypes beside it, which A1111's restricted unpickler also admits). It accepts
    and discards its arguments and state; no code runs."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def __setstate__(self, state: object) -> None:
        pass


_INERT_GLOBALS = (
    "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",
    "lightning.pytorch.callbacks.model_checkpoint.ModelCheckpoint",
    # numpy 1.x and 2.x spellings of a pickled scalar / array and its dtype
    "numpy.core.multiarray.scalar",
    "numpy._core.multiarray.scalar",
    "numpy.core.multiarray._reconstruct",
    "numpy._core.multiarray._reconstruct",
    "numpy.ndarray",
    "numpy.dtype",
)
_LIGHTNING_KEYS = ("global_step", "epoch", "pytorch-lightning_version", "optimizer_states")


def _load_pickle(path: Path) -> StateDict:
    load: Callable[..., object] = torch.load
    mmap = zipfile.is_zipfile(path)  # mmap needs the zip format; legacy files are read whole
    try:
        with torch.serialization.safe_globals([(_Inert, name) for name in _INERT_GLOBALS]):
            obj = load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL (\S+)", str(exc))
        needs = f"it needs the global {found.group(1)}" if found else str(exc).splitlines()[0]
        raise CheckpointError(
            f"{path}: the pickled checkpoint needs Python objects beyond plain tensors, and "
            f"genmodels never unpickles arbitrary code ({needs}). If you trust "
            f"the file, convert it once to safetensors in a separate Python session: "
            f"`sd = torch.load(PATH, weights_only=False); sd = sd.get('state_dict', sd); "
            f"safetensors.torch.save_file({{k: v.contiguous() for k, v in sd.items() "
            f"if isinstance(v, torch.Tensor)}}, 'model.safetensors')`"
        ) from exc
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile) as exc:
        raise CheckpointError(_corrupt(path, exc)) from exc
    return _tensor_dict(obj, path)


def _tensor_dict(obj: object, path: Path) -> StateDict:
    """Unwrap ``{"state_dict": {...}}`` (Lightning) and keep the tensors."""
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a dict of tensors, got {type(obj).__name__}")
    out = {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}
    if not out:
        lightning = any(k in obj for k in (*_LIGHTNING_KEYS, "state_dict"))
        what = (
            f"a Lightning training checkpoint without a usable 'state_dict' entry (its "
            f"'state_dict' is {type(obj.get('state_dict')).__name__})"
            if lightning
            else "no weights"
        )
        raise CheckpointError(f"{path}: the file holds no tensors: {what} (keys: {list(obj)[:10]})")
    return out


def save_state_dict(
    state_dict: Mapping[str, Tensor],
    path: str | os.PathLike,
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write tensors as safetensors atomically (non-contiguous ones are made contiguous)."""
    tensors = {k: v.detach().contiguous() for k, v in state_dict.items()}
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta or None))


def write_json(path: str | os.PathLike, data: object) -> None:
    """Atomically write ``data`` as indented JSON."""

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, write)


def read_json(path: str | os.PathLike) -> dict:
    path = Path(path)
    check_regular_file(path, "JSON config")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: cannot read JSON config: {exc}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data
