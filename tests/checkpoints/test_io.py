"""Checkpoint file reading/writing: formats, safety (no arbitrary unpickling), corrupt files,
atomic writes."""

from __future__ import annotations

import collections
import os
import sys
import types
from pathlib import Path

import pytest
import torch

from genmodels.checkpoints.atomic import write_atomic
from genmodels.checkpoints.io import (
    CheckpointError,
    load_state_dict,
    read_metadata,
    save_state_dict,
    stream_safetensors,
)

TENSORS = {"a.weight": torch.randn(4, 3), "b.bias": torch.arange(5), "h": torch.ones(2).half()}


def _same(got: dict, want: dict) -> None:
    assert list(got) == list(want) or set(got) == set(want)
    for k, v in want.items():
        assert got[k].dtype == v.dtype and torch.equal(got[k], v), k


def test_safetensors_round_trip_and_metadata(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    view = torch.randn(6, 6)[:, :3]  # non-contiguous: written contiguous
    save_state_dict({**TENSORS, "view": view}, path, {"k": "v"})
    _same(load_state_dict(path), {**TENSORS, "view": view.contiguous()})
    assert read_metadata(path) == {"k": "v"}
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_stream_converts_while_reading(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_state_dict({**TENSORS, "big": torch.randn(100, 33)}, path)
    got = stream_safetensors(path, torch.bfloat16, chunk_bytes=256)  # many chunks per tensor
    for k, v in {**TENSORS, "big": load_state_dict(path)["big"]}.items():
        want = v.to(torch.bfloat16) if v.is_floating_point() else v
        assert got[k].dtype == want.dtype and torch.equal(got[k], want), k
    assert set(stream_safetensors(path, torch.float16, keys={"h"})) == {"h"}
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    with pytest.raises(CheckpointError, match="m.safetensors: file ends early"):
        stream_safetensors(path, torch.bfloat16)


def test_unknown_suffix_is_sniffed(tmp_path: Path) -> None:
    save_state_dict(TENSORS, tmp_path / "weights.model")
    _same(load_state_dict(tmp_path / "weights.model"), TENSORS)


@pytest.mark.parametrize("wrapped", [False, True])
@pytest.mark.parametrize("legacy", [False, True])
def test_ckpt_with_or_without_state_dict(tmp_path: Path, wrapped: bool, legacy: bool) -> None:
    path = tmp_path / "m.ckpt"
    obj = {"state_dict": TENSORS, "epoch": 3, "global_step": 10} if wrapped else TENSORS
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    _same(load_state_dict(path), TENSORS)
    assert read_metadata(path) == {}


class Callback:  # stands in for e.g. pytorch_lightning.callbacks.ModelCheckpoint
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_ckpt_needing_globals_is_refused_with_advice(tmp_path: Path) -> None:
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": TENSORS, "callbacks": Callback()}, path)
    with pytest.raises(CheckpointError) as err:
        load_state_dict(path)
    msg = str(err.value)
    assert str(path) in msg and "never unpickles arbitrary code" in msg
    assert "weights_only=False" in msg and "safetensors.torch.save_file" in msg
    ordered = tmp_path / "ordered.ckpt"
    torch.save(collections.OrderedDict(TENSORS), ordered)  # allow-listed containers are fine
    _same(load_state_dict(ordered), TENSORS)


def test_lightning_callback_state_is_read_inertly(tmp_path: Path, monkeypatch) -> None:
    """Original SD .ckpt files pickle Lightning's ModelCheckpoint; it must not block loading
    (and Lightning need not be installed)."""
    names = ["pytorch_lightning", "pytorch_lightning.callbacks"]
    module = types.ModuleType("pytorch_lightning.callbacks.model_checkpoint")
    for name in names:
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, module.__name__, module)
    cls = type("ModelCheckpoint", (), {"__module__": module.__name__})
    module.ModelCheckpoint = cls
    callback = cls()
    callback.best_model_score = torch.tensor(0.1)
    path = tmp_path / "sd-v1.ckpt"
    torch.save({"state_dict": TENSORS, "callbacks": {cls: {"k": 1}}, "cb": callback}, path)
    for name in [*names, module.__name__]:
        monkeypatch.delitem(sys.modules, name)
    _same(load_state_dict(path), TENSORS)


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_truncated_file_names_the_file(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"m{suffix}"
    big = {"w": torch.randn(256, 256)}
    if suffix == ".ckpt":
        torch.save(big, path)
    else:
        save_state_dict(big, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=f"{path.name}.*truncated or corrupt"):
        load_state_dict(path)


def test_garbage_and_missing_files(tmp_path: Path) -> None:
    bad = tmp_path / "junk.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(CheckpointError, match="junk.safetensors"):
        load_state_dict(bad)
    with pytest.raises(CheckpointError, match="junk.safetensors"):
        read_metadata(bad)
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        load_state_dict(tmp_path / "nope.safetensors")
    empty = tmp_path / "empty.ckpt"
    torch.save({"epoch": 1}, empty)
    with pytest.raises(CheckpointError, match="holds no tensors"):
        load_state_dict(empty)


def test_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_state_dict(TENSORS, path)
    before = path.read_bytes()

    def crash(tmp: Path) -> None:  # dies half-way through writing
        Path(tmp).write_bytes(b"partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomic(path, crash)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]
