"""``--controlnet / --control-image / --control-weight / --control-start / --control-end`` end to
end: the PNG records the units as A1111 does, --from-png with the same files reproduces the
image, and bad input exits 2 with one line before the model is loaded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from genmodels.cli.generate import main
from genmodels.pipelines.build import build_pipeline, save_pipeline
from genmodels.pipelines.controlnet_infotext import legacy_model_hash, parse_control_infotext
from genmodels.pipelines.metadata import parameters_from_infotext, read_png_parameters
from tests.pipelines.controlnet_files import controlnet_for, save_ldm

FAST = ["--steps", "3", "--dtype", "fp32", "--device", "cpu", "--quiet", "--seed", "2",
        "--width", "16", "--height", "16"]  # fmt: skip


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cncli")
    pipe = build_pipeline()
    save_pipeline(pipe, root / "tiny.safetensors")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(root / "edges.png")
    xl = build_pipeline(model_type="sdxl-base")
    return {
        "ckpt": root / "tiny.safetensors", "edges": root / "edges.png",
        "cn": save_ldm(controlnet_for(pipe), root / "canny.safetensors"),
        "cn2": save_ldm(controlnet_for(pipe, seed=3), root / "depth.pth", prefix=""),
        "xl": save_ldm(controlnet_for(xl), root / "xl.safetensors"),
    }  # fmt: skip


def _run(files, out: Path, *extra: str) -> int:
    return main(["txt2img", "--ckpt", str(files["ckpt"]), "--prompt", "a house", "--outdir",
                 str(out), *FAST, *extra])  # fmt: skip


def test_units_recorded_and_from_png_reproduces(files, tmp_path) -> None:
    units = ["--controlnet", str(files["cn"]), "--control-image", str(files["edges"]),
             "--control-weight", "0.7", "--control-end", "0.6",
             "--controlnet", str(files["cn2"]), "--control-image", str(files["edges"])]  # fmt: skip
    assert _run(files, tmp_path / "a", *units) == 0
    assert _run(files, tmp_path / "plain") == 0
    (png,) = (tmp_path / "a").iterdir()
    text = read_png_parameters(png)
    digest = legacy_model_hash(files["cn"])
    assert f'ControlNet 0: "Module: none, Model: canny [{digest}], Weight: 0.7, ' in text
    records = parse_control_infotext(parameters_from_infotext(text).extra)
    assert [(r.name, r.weight, r.start, r.end) for r in records] == [
        ("canny", 0.7, 0.0, 0.6), ("depth", 1.0, 0.0, 1.0)]  # fmt: skip
    plain = np.asarray(Image.open(next((tmp_path / "plain").iterdir())))
    assert not np.array_equal(np.asarray(Image.open(png)), plain)

    again = ["--controlnet", str(files["cn"]), "--control-image", str(files["edges"]),
             "--controlnet", str(files["cn2"]), "--control-image", str(files["edges"])]  # fmt: skip
    rerun = ["txt2img", "--ckpt", str(files["ckpt"]), "--from-png", str(png), "--outdir",
             str(tmp_path / "b"), "--quiet", "--dtype", "fp32", "--device", "cpu",
             *again]  # fmt: skip
    assert main(rerun) == 0
    (png2,) = (tmp_path / "b").iterdir()
    assert np.array_equal(np.asarray(Image.open(png2)), np.asarray(Image.open(png)))
    assert read_png_parameters(png2) == text


@pytest.mark.parametrize(
    "case, expected",
    [
        ("no_image", "one control image per ControlNet"),
        ("range", "--control-start <= --control-end"),
        ("missing", "not found"),
        ("family", "Stable Diffusion XL base"),
        ("from_png", "--controlnet PATH"),
    ],
)
def test_bad_input_exits_2_with_one_line(files, tmp_path, capsys, case, expected) -> None:
    cn, edges = str(files["cn"]), str(files["edges"])
    args = {
        "no_image": ["--controlnet", cn],
        "range": ["--controlnet", cn, "--control-image", edges, "--control-start", "0.8",
                  "--control-end", "0.2"],
        "missing": ["--controlnet", str(tmp_path / "nope.safetensors"), "--control-image", edges],
        "family": ["--controlnet", str(files["xl"]), "--control-image", edges],
    }.get(case)  # fmt: skip
    if case == "from_png":
        assert _run(files, tmp_path / "src", "--controlnet", cn, "--control-image", edges) == 0
        args = ["--from-png", str(next((tmp_path / "src").iterdir()))]
    assert _run(files, tmp_path / "out", *args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_info_describes_a_controlnet(files, capsys) -> None:
    from genmodels.cli.main import main as genmodels

    assert genmodels(["info", str(files["xl"])]) == 0
    out = capsys.readouterr().out
    assert "format: ControlNet (ldm keys)" in out and "family: Stable Diffusion XL base" in out
    assert "4x the latent size" in out
