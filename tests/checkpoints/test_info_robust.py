"""Issue 18, ``genmodels info`` / the command line: wrong shapes reported as ``txt2img`` refuses
them, training run folders, JSON PNG settings, one-line errors, a closed stdout pipe."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image, PngImagePlugin

from genmodels.checkpoints.convert import convert_checkpoint
from genmodels.checkpoints.io import CheckpointError, load_state_dict, save_state_dict
from genmodels.cli import samplers
from genmodels.cli.main import main
from genmodels.pipelines.loading import load_pipeline
from tests.checkpoints.builders import build_reference


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("single")
    build_reference("sd1", root / "ref")
    convert_checkpoint(root / "ref", root / "m.safetensors", "safetensors")
    return root / "m.safetensors"


def test_info_reports_wrong_shapes_that_txt2img_refuses(
    single: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sd = load_state_dict(single)
    sd["first_stage_model.decoder.conv_out.bias"] = torch.zeros(5)  # (3,) in the model
    bad = tmp_path / "bad.safetensors"
    save_state_dict(sd, bad)
    with pytest.raises(CheckpointError, match="Wrong shapes"):
        load_pipeline(bad)  # what txt2img does
    assert main(["info", str(bad)]) == 0
    out = capsys.readouterr().out
    assert "missing keys: none" in out
    assert (
        "wrong shapes (1):\n  first_stage_model.decoder.conv_out.bias: expected (3,), got (5,)"
        in out
    )
    assert "loads strictly: no (0 missing, 1 wrong shapes" in out
    assert main(["info", str(single)]) == 0
    assert "wrong shapes: none\nloads strictly: yes" in capsys.readouterr().out


def _weights(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_state_dict({"w": torch.zeros(3, 4), "b": torch.zeros(3)}, path)


def test_info_describes_a_training_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("task: autoencoder\nsteps: 30\n")
    _weights(run / "vae.safetensors")
    for step in (10, 20):
        _weights(run / "checkpoints" / f"step-{step:08d}" / "model.safetensors")
    (run / "checkpoints" / "step-00000030").mkdir()  # being written: no weights yet
    assert main(["info", str(run)]) == 0
    out = capsys.readouterr().out
    assert "format: genmodels training run" in out and "task: autoencoder" in out
    assert "checkpoints: 2" in out
    assert (
        f"newest checkpoint: step 20 ({run / 'checkpoints' / 'step-00000020'}, 15 parameters)"
        in out
    )
    assert "incomplete checkpoints (no model.safetensors): step-00000030" in out
    assert "files: vae.safetensors" in out
    (run / "config.yaml").write_text("steps: 30\n")  # no task key: a diffusion run
    assert main(["info", str(run / "checkpoints" / "step-00000010")]) == 2  # no config.yaml there
    capsys.readouterr()
    assert main(["info", str(run)]) == 0
    assert "task: diffusion" in capsys.readouterr().out


def test_info_describes_a_vq_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "vq"
    _weights(run / "vqgan.safetensors")
    (run / "vqgan.json").write_text("{}")
    (run / "vqgan_run.yaml").write_text("task: vqgan\n")
    assert main(["info", str(run)]) == 0
    out = capsys.readouterr().out
    assert "task: vqgan" in out and "newest checkpoint: none" in out
    assert "files: vqgan.safetensors, vqgan.json" in out


def test_info_shows_json_png_settings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    meta = PngImagePlugin.PngInfo()
    meta.add_text("parameters", json.dumps({"sampler": "euler", "steps": 10, "seed": 3}))
    Image.new("RGB", (4, 4)).save(tmp_path / "s.png", pnginfo=meta)
    assert main(["info", str(tmp_path / "s.png")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "settings (JSON, written by genmodels sample / vq-sample):"
    assert [line.split() for line in out[1:]] == [["sampler", '"euler"'], ["steps", "10"],
                                                  ["seed", "3"]]  # fmt: skip
    assert not any("Prompt" in line for line in out)


def test_png_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    meta = PngImagePlugin.PngInfo()
    meta.add_text("parameters", "a cat")
    Image.effect_noise((64, 64), 50).save(tmp_path / "ok.png", pnginfo=meta)
    data = (tmp_path / "ok.png").read_bytes()
    for cut in (20, len(data) // 2):
        (tmp_path / "cut.png").write_bytes(data[:cut])
        assert main(["info", str(tmp_path / "cut.png")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "cut.png: not a readable PNG" in err
    assert main(["info", str(tmp_path / "nope.png")]) == 2
    err = capsys.readouterr().err
    assert (
        err
        == f"genmodels info: error: {tmp_path / 'nope.png'}: no such PNG image (file not found)\n"
    )


def test_uncaught_os_and_value_errors_print_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def denied(args: object) -> int:
        raise PermissionError(13, "Permission denied", "/some/file")

    monkeypatch.setattr(samplers, "run", denied)  # register() binds the module's run
    assert main(["samplers"]) == 2
    assert capsys.readouterr().err == "genmodels samplers: error: /some/file: Permission denied\n"

    def multi(args: object) -> int:
        raise ValueError("line one\nline two")

    monkeypatch.setattr(samplers, "run", multi)
    assert main(["samplers"]) == 2
    assert capsys.readouterr().err == "genmodels samplers: error: line one line two\n"


def test_closed_stdout_pipe_is_quiet() -> None:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[2] / "src"))
    proc = subprocess.Popen([sys.executable, "-m", "genmodels.cli.main", "samplers"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader (`| head`) went away
    err = proc.stderr.read().decode()
    assert proc.wait() == 1
    assert "Traceback" not in err and "BrokenPipe" not in err
