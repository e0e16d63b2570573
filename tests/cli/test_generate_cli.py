"""``genmodels txt2img | img2img | inpaint`` end to end with a tiny random checkpoint: files and
metadata, --from-png reproduces an image, bad input exits != 0 with a message and no files."""

from __future__ import annotations

import errno
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from genmodels.cli.generate import main
from genmodels.pipelines.build import build_pipeline, save_pipeline
from genmodels.pipelines.devices import cpu_supports_bf16, resolve_dtype
from genmodels.pipelines.images import save_png
from genmodels.pipelines.metadata import model_hash, parameters_from_infotext, read_png_parameters

FAST = ["--steps", "2", "--dtype", "fp32", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli")
    ckpt = root / "tiny.safetensors"
    save_pipeline(build_pipeline(), ckpt)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / "init.png")
    mask = np.zeros((16, 16), dtype=np.uint8)
    mask[:, 8:] = 255
    Image.fromarray(mask).save(root / "mask.png")
    Image.fromarray(mask[:8]).save(root / "small_mask.png")
    Image.new("RGB", (12, 16)).save(root / "odd.png")
    return {"ckpt": ckpt, "init": root / "init.png", "mask": root / "mask.png",
            "small_mask": root / "small_mask.png"}  # fmt: skip


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_txt2img_files_metadata_and_from_png(files, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    args = ["txt2img", "--ckpt", str(files["ckpt"]), "--prompt", "a (cat:1.2), dog", "--seed",
            "5", "--width", "16", "--height", "16", "--batch-size", "2", "--n-iter", "2",
            "--grid", "--outdir", str(out), "--sampler", "DPM++ 2M Karras", *FAST]  # fmt: skip
    assert main(args) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["00000-5.png", "00001-6.png", "00002-7.png", "00003-8.png", "grid-00004.png"]
    assert Image.open(out / "grid-00004.png").size == (32, 32)
    p = parameters_from_infotext(read_png_parameters(out / "00002-7.png"))
    assert (p.prompt, p.seed, p.steps) == ("a (cat:1.2), dog", 7, 2)
    assert (p.sampler, p.scheduler) == ("dpmpp_2m", "karras")
    assert (p.width, p.height, p.model_name) == (16, 16, "tiny")
    assert p.model_hash == model_hash(files["ckpt"])
    assert str(out / "00003-8.png") in capsys.readouterr().out

    again = tmp_path / "again"
    assert main(["txt2img", "--ckpt", str(files["ckpt"]), "--from-png", str(out / "00002-7.png"),
                 "--outdir", str(again), *FAST]) == 0  # fmt: skip
    (rerun,) = again.iterdir()
    assert rerun.name == "00000-7.png"
    assert np.array_equal(_pixels(rerun), _pixels(out / "00002-7.png"))
    assert read_png_parameters(rerun) == read_png_parameters(out / "00002-7.png")
    assert main(["txt2img", "--ckpt", str(files["ckpt"]), "--from-png", str(rerun), "--outdir",
                 str(again), "--seed", "9", *FAST]) == 0  # fmt: skip
    assert (again / "00001-9.png").exists()  # command line beats --from-png, indices go on
    grid = parameters_from_infotext(read_png_parameters(out / "grid-00004.png"))
    assert grid.seed == 5  # a grid re-runs as its first image


def test_img2img_and_inpaint(files, tmp_path) -> None:
    common = ["--ckpt", str(files["ckpt"]), "--prompt", "a cat", "--init-image",
              str(files["init"]), "--seed", "1", *FAST]  # fmt: skip
    assert main(["img2img", *common, "--strength", "0.5", "--outdir", str(tmp_path / "a")]) == 0
    (a,) = (tmp_path / "a").iterdir()
    assert Image.open(a).size == (16, 16)
    assert "Denoising strength: 0.5" in read_png_parameters(a)
    assert main(["inpaint", *common, "--mask", str(files["mask"]), "--outdir",
                 str(tmp_path / "b")]) == 0  # fmt: skip
    (b,) = (tmp_path / "b").iterdir()
    assert np.array_equal(_pixels(b)[:, :8], _pixels(files["init"])[:, :8])  # kept half
    tiled = ["--vae-tiling-above", "8", "--outdir", str(tmp_path / "c")]
    assert main(["img2img", *common, "--strength", "0.5", *tiled]) == 0
    (c,) = (tmp_path / "c").iterdir()
    assert np.array_equal(_pixels(c), _pixels(a))  # tiled path, but one 512 px tile: exact


def test_dtype_auto() -> None:
    amx = "processor: 0\nflags\t\t: fpu sse avx512f amx_bf16 amx_tile\n"
    assert cpu_supports_bf16(amx) and cpu_supports_bf16("flags : avx512_bf16")
    assert not cpu_supports_bf16("flags : fpu sse avx2")
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_dtype("auto", cpu, amx) == torch.bfloat16
    assert resolve_dtype("auto", cpu, "flags : avx2") == torch.float32
    assert resolve_dtype("auto", cuda) == torch.float16
    assert resolve_dtype("bf16", cpu) == torch.bfloat16


BAD = [
    (["txt2img", "--width", "20"], "--width must be a positive multiple of 8"),
    (["txt2img", "--steps", "0"], "--steps must be >= 1"),
    (["txt2img", "--sampler", "nope"], "unknown sampler 'nope'; valid names"),
    (["txt2img", "--scheduler", "nope"], "unknown scheduler 'nope'; valid"),
    (["txt2img", "--dtype", "fp8"], "--dtype: unknown dtype 'fp8'"),
    (["txt2img", "--n-iter", "0"], "--n-iter must be >= 1"),
    (["img2img", "--init-image", "MISSING"], "cannot read image"),
    (["img2img", "--init-image", "INIT", "--strength", "1.5"], r"--strength must be in \[0, 1\]"),
    (["inpaint", "--init-image", "INIT", "--mask", "SMALL"], "must match"),
    (["img2img", "--init-image", "ODD"], "image size 12x16 must be a multiple of 8"),
    (["txt2img", "--vae-tiling-above", "-1"], "--vae-tiling-above must be >= 0"),
]


@pytest.mark.parametrize(("args", "message"), BAD)
def test_bad_input(files, tmp_path, capsys, args, message) -> None:
    subs = {
        "MISSING": str(tmp_path / "missing.png"),
        "INIT": str(files["init"]),
        "SMALL": str(files["small_mask"]),
        "ODD": str(files["init"].with_name("odd.png")),
    }
    args = [subs.get(a, a) for a in args]
    out = tmp_path / "out"
    base = ["--ckpt", str(files["ckpt"]), "--prompt", "a cat", "--outdir", str(out), *FAST]
    size = ["--width", "16", "--height", "16"] if args[0] == "txt2img" else []
    argv = [args[0], *base, *size, *args[1:]]  # the bad option comes last and wins
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "error:" in err
    assert re.search(message, err), err
    assert not out.exists() or not any(out.iterdir())


def test_missing_prompt_and_checkpoint(files, tmp_path, capsys) -> None:
    assert main(["txt2img", "--ckpt", str(files["ckpt"]), "--outdir", str(tmp_path), *FAST]) == 2
    assert "give a prompt with --prompt" in capsys.readouterr().err
    argv = ["txt2img", "--ckpt", str(tmp_path / "none.safetensors"), "--prompt", "x", *FAST]
    assert main(argv) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def _base(files, out) -> list[str]:
    return ["--ckpt", str(files["ckpt"]), "--prompt", "a cat", "--outdir", str(out), *FAST]


def test_runs_into_one_folder_never_overwrite(files, tmp_path) -> None:
    out = tmp_path / "out"
    argv = ["txt2img", *_base(files, out), "--width", "16", "--height", "16", "--seed", "1",
            "--batch-size", "2", "--grid"]  # fmt: skip
    with ThreadPoolExecutor(2) as pool:  # two concurrent runs with the same seed
        assert list(pool.map(main, [argv, argv])) == [0, 0]
    assert main(argv) == 0  # and a third, later
    names = sorted(p.name for p in out.iterdir())
    assert len(names) == 9 and len({n.split("-")[0] for n in names if n[0].isdigit()}) == 6
    assert sum(n.startswith("grid-") for n in names) == 3


def test_ctrl_c_keeps_finished_images_and_exits_130(files, tmp_path, capsys, monkeypatch) -> None:
    from genmodels.pipelines import generate

    real, calls = generate.txt2img, []

    def interrupted_second_time(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(generate, "txt2img", interrupted_second_time)
    out = tmp_path / "out"
    argv = ["txt2img", *_base(files, out), "--width", "16", "--height", "16", "--seed", "1",
            "--batch-size", "2", "--n-iter", "2", "--grid"]  # fmt: skip
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert err.strip() == "interrupted: wrote 2 of 4 images"
    assert sorted(p.name for p in out.iterdir()) == ["00000-1.png", "00001-2.png"]


def test_disk_full_is_one_line(files, tmp_path, capsys, monkeypatch) -> None:
    def full(self, fp, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Image.Image, "save", full)
    out = tmp_path / "out"
    assert main(["txt2img", *_base(files, out), "--width", "16", "--height", "16"]) == 2
    err = capsys.readouterr().err
    assert "the disk is full" in err and err.count("\n") == 1
    assert not any(out.iterdir())  # no reserved name, no hidden temporary file


def test_seed_past_32_bit_re_runs_from_png(files, tmp_path) -> None:
    out = tmp_path / "out"
    argv = ["txt2img", *_base(files, out), "--width", "16", "--height", "16", "--seed",
            "4294967295", "--batch-size", "2"]  # fmt: skip
    assert main(argv) == 0
    second = out / "00001-4294967296.png"
    again = tmp_path / "again"
    assert main(["txt2img", "--ckpt", str(files["ckpt"]), "--from-png", str(second), "--outdir",
                 str(again), *FAST]) == 0  # fmt: skip
    (rerun,) = again.iterdir()
    assert rerun.name == "00000-4294967296.png"
    assert np.array_equal(_pixels(rerun), _pixels(second))


def test_inpaint_honours_width_and_height(files, tmp_path) -> None:
    out = tmp_path / "out"
    argv = ["inpaint", *_base(files, out), "--init-image", str(files["init"]), "--mask",
            str(files["mask"]), "--width", "32", "--height", "16"]  # fmt: skip
    assert main(argv) == 0
    (image,) = out.iterdir()
    assert Image.open(image).size == (32, 16)
    assert parameters_from_infotext(read_png_parameters(image)).width == 32


def test_help_states_the_size_rule(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["txt2img", "--help"])
    assert "any multiple of 8" in capsys.readouterr().out


def _png_with(path: Path, text: str) -> Path:
    save_png(Image.new("RGB", (16, 16)), path, text)
    return path


CHECKED_FIRST = [
    (["txt2img", "--width", "99968", "--height", "99968"], r"99968x99968 = \d+ pixels is more"),
    (["txt2img", "--steps", "10000000"], "steps 10000000 is more than the limit of 10000"),
    (["txt2img", "--cfg", "nan"], "--cfg must be a finite number"),
    (["txt2img", "--cfg", "inf"], "--cfg must be a finite number"),
    (["img2img", "--init-image", "INIT", "--strength", "nan"], r"--strength must be in \[0, 1\]"),
    (["txt2img", "--device", "banana"], "--device: unknown device 'banana'"),
    (["txt2img", "--device", "cuda:0"], "--device: device 'cuda:0'"),
    (["txt2img", "--dtype", "int8"], "--dtype: unknown dtype 'int8'"),
    (["txt2img", "--outdir", "FILE"], "output folder .* is a file"),
    (["txt2img", "--outdir", "LONG"], "is longer than"),
    (["txt2img", "--seed", "18446744073709551615", "--batch-size", "2"], "past the largest seed"),
    (["txt2img", "--from-png", "NANPNG"], "--from-png .*CFG scale: nan is out of range"),
    (["txt2img", "--from-png", "EMPTYPNG"], "no generation parameters"),
    (["txt2img", "--from-png", "HUGEPNG"], "Size-1: 99968 .*|more than the limit"),
    (["img2img", "--init-image", "FIFO"], "not a regular file"),
    (["img2img", "--init-image", "DIR"], "a directory"),
    (["img2img", "--init-image", "INIT", "--max-pixels", "100"], "more than the limit of 100"),
]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal of cuda")
@pytest.mark.parametrize(("args", "message"), CHECKED_FIRST)
def test_checked_before_loading(files, tmp_path, capsys, monkeypatch, args, message) -> None:
    import genmodels.pipelines.loading as loading

    def never(*a, **k):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(loading, "load_pipeline", never)
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "file").write_text("x")
    huge = "x\nSteps: 2, Sampler: Euler, Seed: 1, Size: 99968x99968"
    subs = {
        "INIT": str(files["init"]), "FIFO": str(tmp_path / "fifo"), "DIR": str(tmp_path),
        "FILE": str(tmp_path / "file"), "LONG": str(tmp_path / ("x" * 300)),
        "NANPNG": str(_png_with(tmp_path / "nan.png", "x\nSteps: 2, CFG scale: nan, Seed: 1")),
        "EMPTYPNG": str(_png_with(tmp_path / "empty.png", "")),
        "HUGEPNG": str(_png_with(tmp_path / "huge.png", huge)),
    }  # fmt: skip
    args = [subs.get(a, a) for a in args]
    out = tmp_path / "out"
    size = ["--width", "16", "--height", "16"] if args[0] == "txt2img" else []
    argv = [args[0], *_base(files, out), *size, *args[1:]]
    if "--from-png" in args:
        argv = [a for a in argv if a not in ("--prompt", "a cat", "--width", "--height", "16")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()
