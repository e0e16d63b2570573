"""Output names: A1111 ``NNNNN-seed.png`` numbering, never two writers on one name, never an
overwrite, nothing left behind by a failed write, one-line errors for unusable folders."""

from __future__ import annotations

import errno
import multiprocessing
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

from genmodels.pipelines import outputs
from genmodels.pipelines.outputs import (
    OutputError,
    check_outdir,
    grid_name,
    image_name,
    next_index,
    write_output,
)


def _image(value: int = 0) -> Image.Image:
    return Image.new("RGB", (8, 8), (value % 256, 0, 0))


def test_numbering_counts_images_and_grids(tmp_path) -> None:
    assert next_index(tmp_path) == 0
    assert write_output(tmp_path, image_name(7), _image()).name == "00000-7.png"
    assert write_output(tmp_path, grid_name, _image()).name == "grid-00001.png"
    (tmp_path / "00041-3.png").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("x")
    assert write_output(tmp_path, image_name(7), _image()).name == "00042-7.png"
    assert (tmp_path / "00041-3.png").read_bytes() == b"x"  # never overwritten


def _write_many(args: tuple[str, int]) -> list[str]:
    folder, worker = args
    return [write_output(folder, image_name(worker), _image(i)).name for i in range(10)]


def test_concurrent_threads_and_processes_never_share_a_name(tmp_path) -> None:
    (tmp_path / "00000-99.png").write_bytes(b"earlier")
    with ThreadPoolExecutor(4) as pool:
        names = [n for ns in pool.map(_write_many, [(str(tmp_path), w) for w in range(4)])
                 for n in ns]  # fmt: skip
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as pool:
        names += [n for ns in pool.map(_write_many, [(str(tmp_path), w) for w in (5, 6)])
                  for n in ns]  # fmt: skip
    indices = [int(n.split("-")[0]) for n in names]
    assert len(set(indices)) == len(names) == 60  # no index taken twice, let alone a name
    assert sorted(indices) == list(range(1, 61))
    assert (tmp_path / "00000-99.png").read_bytes() == b"earlier"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files


def test_failed_write_leaves_nothing(tmp_path, monkeypatch) -> None:
    def interrupted(image, path, parameters=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(outputs, "save_png", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_output(tmp_path, image_name(1), _image())
    assert not any(tmp_path.iterdir())  # the reserved name is gone too


def test_disk_full_is_one_clear_line(tmp_path, monkeypatch) -> None:
    def full(tmp: Path) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Image.Image, "save", lambda self, tmp, **kw: full(tmp))
    with pytest.raises(OutputError, match=r"cannot write .*00000-1.png: the disk is full"):
        write_output(tmp_path, image_name(1), _image())
    assert not any(tmp_path.iterdir())  # neither the temporary file nor the reserved name


def test_check_outdir(tmp_path, monkeypatch) -> None:
    assert check_outdir(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # checking creates nothing
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="is a file"):
        check_outdir(tmp_path / "file")
    with pytest.raises(OutputError, match="is inside a file"):
        check_outdir(tmp_path / "file" / "sub")
    with pytest.raises(OutputError, match="is longer than"):
        check_outdir(tmp_path / ("x" * 300))
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(OutputError, match="is not writable"):
        check_outdir(tmp_path / "new")
