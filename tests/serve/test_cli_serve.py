"""``genmodels serve`` as a user runs it: the startup line names loopback, the API answers,
Ctrl-C stops it with status 0 and nothing listens; bad arguments fail in one line before any
port opens; a broken checkpoint in --ckpt-dir is refused and the loaded model keeps serving."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import requests

from genmodels.cli.main import main

from .conftest import SIZE, make_config, port_closed, require_serve

require_serve()

from genmodels.serve.app import create_app  # noqa: E402
from genmodels.serve.server import ServerThread  # noqa: E402

SRC = Path(__file__).resolve().parents[2] / "src"


def test_serve_command_starts_answers_and_stops_on_ctrl_c(ckpts, tmp_path) -> None:
    env = dict(os.environ, PYTHONPATH=str(SRC), OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "genmodels.cli.main",
        "serve",
        "--ckpt",
        str(ckpts["a"]),
        "--port",
        "0",
        "--device",
        "cpu",
        "--dtype",
        "fp32",
        "--outdir",
        str(tmp_path),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert "loopback only" in line, line + proc.stderr.read()
        port = int(re.search(r"127\.0\.0\.1:(\d+)/", line).group(1))
        options = requests.get(f"http://127.0.0.1:{port}/sdapi/v1/options", timeout=30).json()
        assert options["sd_model_checkpoint"].startswith("tiny.safetensors [")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0, proc.stderr.read()
    finally:
        proc.kill()
    assert port_closed(port)
    assert "Traceback" not in proc.stderr.read()


def test_serve_command_bad_arguments(ckpts, tmp_path, capsys) -> None:
    ckpt = str(ckpts["a"])
    cases = [
        (["--ckpt", str(tmp_path / "missing.safetensors")], "checkpoint not found"),
        (["--ckpt", ckpt, "--api-auth", "nopassword"], "--api-auth"),
        (["--ckpt", ckpt, "--port", "70000"], "--port"),
        (["--ckpt", ckpt, "--ckpt-dir", str(tmp_path / "nope")], "--ckpt-dir"),
        (["--ckpt", ckpt, "--max-body-mb", "0"], "--max-body-mb"),
    ]
    for extra, needle in cases:
        assert main(["serve", *extra]) == 2
        err = capsys.readouterr().err
        assert needle in err and len(err.strip().splitlines()) == 1, err


def test_a_broken_checkpoint_is_refused_and_the_model_kept(ckpts, tmp_path) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copy(ckpts["b"], folder / "good.safetensors")
    (folder / "broken.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    with ServerThread(create_app(make_config(ckpts, tmp_path / "out", ckpt_dir=folder))) as s:
        url = f"{s.url}/sdapi/v1"
        body = dict(prompt="x", seed=2, steps=2, **SIZE)
        before = requests.post(f"{url}/txt2img", json=body, timeout=60).json()["images"]
        r = requests.post(
            f"{url}/options", json={"sd_model_checkpoint": "broken.safetensors"}, timeout=60
        )
        assert r.status_code == 400 and "broken.safetensors" in r.json()["detail"], r.text
        options = requests.get(f"{url}/options", timeout=10).json()
        assert options["sd_model_checkpoint"].startswith("tiny.safetensors")
        after = requests.post(f"{url}/txt2img", json=body, timeout=60).json()["images"]
        assert np.array_equal(before, after)


def test_an_inpainting_checkpoint(tmp_path) -> None:
    """A 9-channel model: img2img with a mask uses its masked-image conditioning."""
    import base64
    import io

    from PIL import Image

    from genmodels.pipelines.build import build_pipeline, save_pipeline

    ckpt = tmp_path / "inpainting.safetensors"
    save_pipeline(build_pipeline(inpainting=True), ckpt)
    rng = np.random.default_rng(2)
    image = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 16:48] = 255

    def b64(im: Image.Image) -> str:
        buffer = io.BytesIO()
        im.save(buffer, format="PNG")
        return base64.b64encode(buffer.getvalue()).decode()

    config = make_config({"a": ckpt, "dir": None}, tmp_path / "out")
    with ServerThread(create_app(config)) as s:
        body = dict(prompt="x", seed=1, steps=3, init_images=[b64(image)],
                    mask=b64(Image.fromarray(mask)), **SIZE)  # fmt: skip
        r = requests.post(f"{s.url}/sdapi/v1/img2img", json=body, timeout=60)
        assert r.status_code == 200, r.text[:300]
        out = np.asarray(Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0]))))
        src = np.asarray(image)
        keep = mask == 0
        assert np.array_equal(out[keep], src[keep]) and not np.array_equal(out, src)
        info = json.loads(r.json()["info"])
        assert info["is_using_inpainting_conditioning"] is True
        txt = requests.post(f"{s.url}/sdapi/v1/txt2img", json=dict(prompt="x", **SIZE), timeout=60)
        assert txt.status_code == 200


def test_without_the_serve_extra_the_message_says_what_to_install(ckpts, monkeypatch, capsys):
    for name in [m for m in sys.modules if m.startswith("genmodels.serve")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "fastapi", None)  # import fastapi -> ImportError
    assert main(["serve", "--ckpt", str(ckpts["a"])]) == 2
    assert "pip install 'genmodels[serve]'" in capsys.readouterr().err
