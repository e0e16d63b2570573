"""A tiny random-weight checkpoint served on a free loopback port, for the serve tests.

One server per test session (loading costs ~1 s); tests that need other settings start their
own. Every server is stopped at the end and its port checked closed."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from genmodels.pipelines.build import build_pipeline, save_pipeline
from genmodels.pipelines.limits import GenerationLimits
from genmodels.pipelines.loading import load_pipeline


def require_serve() -> None:
    """Skip the calling test module unless the serve extra and webuiapi are installed (the
    test extra has them). Called at the top of each module: a skip in a conftest would stop
    the whole collection."""
    for name in ("fastapi", "uvicorn", "webuiapi"):
        pytest.importorskip(name)


SIZE = dict(width=64, height=64)
MAX_PIXELS = 256 * 256
MAX_BODY = 2 * 2**20


def port_closed(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture(scope="session")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("serve-ckpts")
    (root / "more").mkdir()
    a, b = root / "tiny.safetensors", root / "more" / "other.safetensors"
    save_pipeline(build_pipeline(seed=0), a)
    save_pipeline(build_pipeline(seed=1), b)
    return {"a": a, "b": b, "dir": root / "more"}


def make_config(ckpts: dict[str, Path], outdir: Path, **kw):
    from genmodels.serve.config import ServeConfig

    base = dict(ckpt=ckpts["a"], ckpt_dir=ckpts["dir"], device="cpu", dtype="fp32",
                outdir=outdir, limits=GenerationLimits(max_pixels=MAX_PIXELS),
                max_body_bytes=MAX_BODY)  # fmt: skip
    return ServeConfig(**(base | kw))


@pytest.fixture(scope="session")
def server(ckpts, tmp_path_factory):
    from genmodels.serve.app import create_app
    from genmodels.serve.server import ServerThread

    thread = ServerThread(create_app(make_config(ckpts, tmp_path_factory.mktemp("out")))).start()
    yield thread
    thread.stop()
    assert port_closed(thread.port), "the server still listens after stop()"


@pytest.fixture()
def api(server):
    import webuiapi

    return webuiapi.WebUIApi(host=server.host, port=server.port, sampler="Euler", steps=4)


@pytest.fixture(scope="session")
def pipe(ckpts):
    """The same checkpoint loaded directly: the library's results to compare with."""
    return load_pipeline(ckpts["a"], dtype="fp32", device="cpu")
