"""Issue 18, checkpoint files: convert never clobbers or mislabels, diffusers folders appear only
complete, partial folders are refused, written files get the umask mode, OS errors are named."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from genmodels.checkpoints import diffusers_folder, io
from genmodels.checkpoints.atomic import remove_stale_temps
from genmodels.checkpoints.convert import convert_checkpoint, read_checkpoint
from genmodels.checkpoints.io import (
    CheckpointError,
    load_state_dict,
    os_error_message,
    read_metadata,
    save_state_dict,
)
from genmodels.cli.main import main
from tests.checkpoints.builders import build_reference


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SD 1.x checkpoint as one genmodels safetensors file."""
    root = tmp_path_factory.mktemp("single")
    build_reference("sd1", root / "ref")
    convert_checkpoint(root / "ref", root / "m.safetensors", "safetensors")
    return root / "m.safetensors"


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# --- 1. convert: existing destination and suffix --------------------------------------------


def test_convert_refuses_existing_file_unless_overwrite(
    single: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dst = tmp_path / "existing.safetensors"
    dst.write_bytes(b"precious")
    assert main(["convert", str(single), str(dst), "--to", "safetensors"]) == 2
    err = capsys.readouterr().err
    assert "existing.safetensors: file exists" in err and "--overwrite" in err
    assert dst.read_bytes() == b"precious"
    assert main(["convert", str(single), str(dst), "--to", "safetensors", "--overwrite"]) == 0
    assert load_state_dict(dst).keys() == load_state_dict(single).keys()


def test_convert_refuses_a_non_safetensors_name(single: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"out\.ckpt: a safetensors file needs a \.safetensors"):
        convert_checkpoint(single, tmp_path / "out.ckpt", "safetensors")
    assert not (tmp_path / "out.ckpt").exists()
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(ValueError, match="exists and is not a folder"):
        convert_checkpoint(single, tmp_path / "file", "diffusers")


def test_convert_overwrite_replaces_only_a_diffusers_folder(single: Path, tmp_path: Path) -> None:
    out = tmp_path / "d"
    convert_checkpoint(single, out, "diffusers")
    with pytest.raises(ValueError, match="not empty"):
        convert_checkpoint(single, out, "diffusers")
    convert_checkpoint(single, out, "diffusers", overwrite=True)
    assert read_checkpoint(out)[0].keys() == load_state_dict(single).keys()
    assert [p.name for p in tmp_path.iterdir()] == ["d"]  # no temporaries left
    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.jpg").write_bytes(b"x")
    with pytest.raises(ValueError, match="not a diffusers model folder"):
        convert_checkpoint(single, other, "diffusers", overwrite=True)
    assert (other / "cat.jpg").read_bytes() == b"x"


# --- 2. diffusers folders: complete or absent -----------------------------------------------


def test_interrupted_convert_leaves_no_folder(
    single: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = diffusers_folder.save_state_dict

    def crash_on_vae(sd: dict, path: str | Path, metadata: dict | None = None) -> None:
        if "vae" in str(path):
            raise KeyboardInterrupt  # killed half-way
        real(sd, path, metadata)

    monkeypatch.setattr(diffusers_folder, "save_state_dict", crash_on_vae)
    with pytest.raises(KeyboardInterrupt):
        convert_checkpoint(single, tmp_path / "out", "diffusers")
    assert list(tmp_path.iterdir()) == []


def test_stale_temporaries_of_dead_writers_are_removed(single: Path, tmp_path: Path) -> None:
    dead = tmp_path / f".out.tmp-{_dead_pid()}-0"
    live = tmp_path / ".out.tmp-1-0"  # PID 1 is always alive
    own = tmp_path / f".out.tmp-{os.getpid()}-99"
    other = tmp_path / ".unrelated.tmp-123-0"
    for folder in (dead, live, own, other):
        (folder / "unet").mkdir(parents=True)
    convert_checkpoint(single, tmp_path / "out", "diffusers")
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(["out", live.name, own.name, other.name])
    assert remove_stale_temps(tmp_path / "out") == []


@pytest.mark.parametrize(
    ("remove", "named"),
    [
        ("model_index.json", "model_index.json"),
        ("vae/diffusion_pytorch_model.safetensors", "vae/ weights"),
        ("unet/config.json", "unet/config.json"),
        ("text_encoder", "text_encoder/"),
        ("scheduler/scheduler_config.json", "scheduler/scheduler_config.json"),
    ],
)
def test_partial_folders_are_refused(
    single: Path, tmp_path: Path, remove: str, named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "d"
    convert_checkpoint(single, out, "diffusers")
    target = out / remove
    if target.is_dir():
        for f in target.iterdir():
            f.unlink()
        target.rmdir()
    else:
        target.unlink()
    with pytest.raises(CheckpointError, match="incomplete diffusers folder") as err:
        read_checkpoint(out)
    assert named in str(err.value)
    assert main(["info", str(out)]) == 2
    assert f"missing {named}" in capsys.readouterr().err or named in err.value.args[0]


# --- 5. unreadable files: the real OS error, regular files only -----------------------------


def test_os_errors_are_named(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such checkpoint file .file not found."):
        load_state_dict(tmp_path / "nope.safetensors")
    with pytest.raises(CheckpointError, match=r"not a regular file \(a folder\)"):
        load_state_dict(tmp_path)
    with pytest.raises(CheckpointError, match=r"not a regular file \(a folder\)"):
        read_metadata(tmp_path)
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)  # opening it would block forever: it must not be opened
    for read in (load_state_dict, read_metadata, io.read_json):
        with pytest.raises(CheckpointError, match=r"not a regular file \(a FIFO"):
            read(fifo)
    denied = PermissionError(errno.EACCES, "Permission denied")
    assert os_error_message("m.ckpt", denied) == "m.ckpt: permission denied"


def test_permission_denied_is_not_called_corrupt(
    single: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    locked = tmp_path / "locked.safetensors"
    locked.write_bytes(single.read_bytes())
    if os.geteuid() == 0:  # root reads anything: simulate the access check failing
        monkeypatch.setattr(io.os, "access", lambda path, mode: False)
    else:
        locked.chmod(0)
    with pytest.raises(CheckpointError, match="locked.safetensors: permission denied$"):
        load_state_dict(locked)


def test_info_on_a_fifo_does_not_block(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fifo = tmp_path / "model.safetensors"
    os.mkfifo(fifo)
    assert main(["info", str(fifo)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "FIFO" in err and "corrupt" not in err


# --- 6. file modes ---------------------------------------------------------------------------


def test_written_files_get_the_umask_mode(single: Path, tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        save_state_dict({"w": torch.zeros(2)}, tmp_path / "a.safetensors")
        convert_checkpoint(single, tmp_path / "b.safetensors", "safetensors")
        convert_checkpoint(single, tmp_path / "d", "diffusers")
    finally:
        os.umask(old)
    files = [tmp_path / "a.safetensors", tmp_path / "b.safetensors",
             *(p for p in (tmp_path / "d").rglob("*") if p.is_file())]  # fmt: skip
    folders = [tmp_path / "d", *(p for p in (tmp_path / "d").rglob("*") if p.is_dir())]
    assert {stat.S_IMODE(p.stat().st_mode) for p in files} == {0o644}
    assert {stat.S_IMODE(p.stat().st_mode) for p in folders} == {0o755}
