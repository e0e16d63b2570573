"""``genmodels info`` and ``genmodels convert`` (driven through their own sub-parsers)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch
from PIL import Image, PngImagePlugin

from genmodels.checkpoints.io import CheckpointError, load_state_dict, save_state_dict
from genmodels.cli import convert, info
from tests.checkpoints.builders import build_reference


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="genmodels")
    sub = parser.add_subparsers(dest="command")
    info.register(sub)
    convert.register(sub)
    args = parser.parse_args(argv)
    return args.func(args)


def test_convert_then_info(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    build_reference("sdxl-base", tmp_path / "ref")
    single = tmp_path / "xl.safetensors"
    assert _run(["convert", str(tmp_path / "ref"), str(single), "--to", "safetensors"]) == 0
    assert "Stable Diffusion XL base" in capsys.readouterr().out
    sd = load_state_dict(single)
    sd = {k: v.half() for k, v in sd.items()}
    sd.update({f"model_ema.extra{i}": torch.zeros(1) for i in range(12)})
    sd["conditioner.embedders.1.model.logit_scale"] = torch.tensor(1.0)
    del sd["first_stage_model.decoder.conv_out.bias"]
    plain = tmp_path / "plain.safetensors"
    save_state_dict(sd, plain)
    assert _run(["info", str(plain)]) == 0
    out = capsys.readouterr().out
    assert "architecture: Stable Diffusion XL base" in out
    assert "prediction: eps (default (no v-prediction marker))" in out
    assert "EMA weights: yes" in out and "float16 x" in out and "format: ldm" in out
    assert "unused keys (13):" in out and "conditioner.embedders.1.model.logit_scale" in out
    assert "... 3 more (--keys lists all)" in out
    assert "missing keys (1):\n  first_stage_model.decoder.conv_out.bias" in out
    assert "parameters: unet " in out and "latent scale factor: 0.13025" in out
    assert _run(["info", str(plain), "--keys", "--prediction", "v"]) == 0
    out = capsys.readouterr().out
    assert "model_ema.extra9" in out and "prediction: v (override)" in out


def test_info_on_a_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    meta = PngImagePlugin.PngInfo()
    meta.add_text("parameters", "a cat\nSteps: 20, Sampler: Euler a, Seed: 1")
    Image.new("RGB", (4, 4)).save(tmp_path / "img.png", pnginfo=meta)
    Image.new("RGB", (4, 4)).save(tmp_path / "bare.png")
    assert _run(["info", str(tmp_path / "img.png")]) == 0
    out = capsys.readouterr().out.splitlines()  # the parsed A1111 parameters, one per line
    assert out[0].split() == ["Prompt", "a", "cat"]
    assert ["Steps", "20"] in [line.split() for line in out]
    assert ["Sampler", "Euler", "a"] in [line.split() for line in out]
    assert _run(["info", str(tmp_path / "bare.png")]) == 0
    assert "no generation parameters" in capsys.readouterr().out


def test_bad_input_raises_value_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 5)
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        _run(["info", str(bad)])
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        _run(["convert", str(bad), str(tmp_path / "out"), "--to", "diffusers"])
    with pytest.raises(SystemExit):
        _run(["convert", str(bad), str(tmp_path / "out"), "--to", "onnx"])
