"""Bad requests get a 4xx JSON answer naming the problem, never a 500, and the server keeps
serving; basic auth; nothing listens once a server is stopped."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import requests
from PIL import Image

from .conftest import MAX_BODY, SIZE, make_config, port_closed, require_serve

require_serve()

from genmodels.serve.app import create_app  # noqa: E402
from genmodels.serve.server import ServerThread  # noqa: E402


def b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


GOOD = dict(prompt="x", steps=2, seed=1, **SIZE)
IMAGE = b64(Image.new("RGB", (64, 64), (10, 200, 30)))

BAD_TXT2IMG = {
    "steps 0": (dict(GOOD, steps=0), 422, "steps"),
    "steps -3": (dict(GOOD, steps=-3), 422, "steps"),
    "steps over the limit": (dict(GOOD, steps=100_000), 400, "steps"),
    "width not a multiple": (dict(GOOD, width=60), 400, "width"),
    "too many pixels": (dict(GOOD, width=1024, height=1024), 400, "pixels"),
    "unknown sampler": (dict(GOOD, sampler_name="Euler z"), 400, "unknown sampler"),
    "unknown scheduler": (dict(GOOD, scheduler="wobbly"), 400, "unknown scheduler"),
    "steps a string": (dict(GOOD, steps="many"), 422, "steps"),
    "cfg a string": (dict(GOOD, cfg_scale="high"), 422, "cfg_scale"),
    "batch 0": (dict(GOOD, batch_size=0), 422, "batch_size"),
    "seed too big": (dict(GOOD, seed=2**70), 422, "seed"),
    "hires fix": (dict(GOOD, enable_hr=True), 400, "enable_hr"),
    "extension scripts": (
        dict(GOOD, alwayson_scripts={"ControlNet": {"args": []}}),
        400,
        "alwayson_scripts",
    ),
    "another checkpoint override": (
        dict(GOOD, override_settings={"sd_model_checkpoint": "zz"}),
        400,
        "sd_model_checkpoint",
    ),
}

BAD_IMG2IMG = {
    "no init image": (dict(GOOD), 400, "init_images"),
    "malformed base64": (
        dict(GOOD, init_images=["data:image/png;base64,@@@not base64@@@"]),
        400,
        "base64",
    ),
    "base64 of no image": (
        dict(GOOD, init_images=[base64.b64encode(b"hello").decode()]),
        400,
        "init_images[0]",
    ),
    "truncated PNG": (
        dict(GOOD, init_images=[IMAGE[: len(IMAGE) // 2 // 4 * 4]]),
        400,
        "init_images[0]",
    ),
    "image over the pixel limit": (
        dict(GOOD, init_images=[b64(Image.new("L", (1024, 1024)))]),
        400,
        "pixels",
    ),
    "mask not base64": (dict(GOOD, init_images=[IMAGE], mask="%%%"), 400, "mask"),
    "init_images not a list": (dict(GOOD, init_images="abc"), 422, "init_images"),
    "strength above 1": (
        dict(GOOD, init_images=[IMAGE], denoising_strength=1.5),
        422,
        "denoising_strength",
    ),
    "resize mode": (dict(GOOD, init_images=[IMAGE], resize_mode=2), 400, "resize_mode"),
}


def check(response: requests.Response, status: int, needle: str) -> None:
    assert response.status_code == status, response.text[:300]
    assert response.headers["content-type"].startswith("application/json")
    assert needle.lower() in response.text.lower(), response.text[:300]


def alive(server) -> None:
    r = requests.post(f"{server.url}/sdapi/v1/txt2img", json=GOOD, timeout=60)
    assert r.status_code == 200 and len(r.json()["images"]) == 1


@pytest.mark.parametrize("case", list(BAD_TXT2IMG))
def test_bad_txt2img_requests(server, case) -> None:
    body, status, needle = BAD_TXT2IMG[case]
    check(requests.post(f"{server.url}/sdapi/v1/txt2img", json=body, timeout=60), status, needle)


@pytest.mark.parametrize("case", list(BAD_IMG2IMG))
def test_bad_img2img_requests(server, case) -> None:
    body, status, needle = BAD_IMG2IMG[case]
    check(requests.post(f"{server.url}/sdapi/v1/img2img", json=body, timeout=60), status, needle)


def test_bad_bodies_and_other_routes(server) -> None:
    url = f"{server.url}/sdapi/v1"
    post = lambda path, **kw: requests.post(url + path, timeout=60, **kw)  # noqa: E731
    check(
        post("/txt2img", data=b"{not json", headers={"content-type": "application/json"}),
        422,
        "json",
    )
    check(post("/txt2img", json=[1, 2]), 422, "")
    check(
        post("/txt2img", data=b"[" * 200_000, headers={"content-type": "application/json"}), 400, ""
    )
    big = {"prompt": "x" * (MAX_BODY + 10)}
    check(post("/txt2img", json=big), 413, "limit")

    def chunks():  # no Content-Length: the limit applies to the streamed bytes
        for _ in range(MAX_BODY // 65536 + 2):
            yield b" " * 65536

    check(
        post("/txt2img", data=chunks(), headers={"content-type": "application/json"}), 413, "limit"
    )
    check(post("/png-info", json={"image": "!!"}), 400, "base64")
    check(post("/png-info", json={"image": base64.b64encode(b"GIF89a").decode()}), 400, "image")
    check(post("/png-info", json={}), 422, "image")
    check(
        post("/options", json={"sd_model_checkpoint": "nope.safetensors"}),
        400,
        "unknown checkpoint",
    )
    check(post("/options", json={"sd_model_checkpoint": ["a"]}), 400, "unknown checkpoint")
    check(post("/options", json="x"), 422, "")
    check(requests.get(f"{server.url}/static/../app.py", timeout=10), 404, "")
    check(requests.get(url + "/nope", timeout=10), 404, "")
    assert requests.get(url + "/progress", timeout=10).status_code == 200
    alive(server)


def test_long_prompt_and_odd_text_are_fine(server) -> None:
    body = dict(GOOD, prompt="(((a" + "\u00e9\u4e2d\n" * 50 + ")", negative_prompt="\x00]")
    r = requests.post(f"{server.url}/sdapi/v1/txt2img", json=body, timeout=60)
    assert r.status_code == 200, r.text[:300]


def test_basic_auth_and_loopback_startup(ckpts, tmp_path) -> None:
    import webuiapi

    config = make_config(ckpts, tmp_path, auth=(("me", "s3cret"),))
    with ServerThread(create_app(config)) as server:
        url = f"{server.url}/sdapi/v1/sd-models"
        assert requests.get(url, timeout=10).status_code == 401
        r = requests.get(url, auth=("me", "wrong"), timeout=10)
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Basic")
        assert requests.get(f"{server.url}/", timeout=10).status_code == 401
        api = webuiapi.WebUIApi(
            host=server.host,
            port=server.port,
            username="me",
            password="s3cret",
            sampler="Euler",
            steps=2,
        )
        assert api.txt2img(prompt="x", seed=1, **SIZE).image.size == (64, 64)
        port = server.port
    assert port_closed(port)


def test_cors_preflight_passes_auth(ckpts, tmp_path) -> None:
    origin = "http://localhost:3000"
    config = make_config(ckpts, tmp_path, auth=(("me", "pw"),), cors_origins=(origin,))
    with ServerThread(create_app(config)) as server:
        url = f"{server.url}/sdapi/v1/txt2img"
        headers = {
            "origin": origin,
            "access-control-request-method": "POST",
            "access-control-request-headers": "content-type, authorization",
        }
        r = requests.options(url, headers=headers, timeout=10)
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == origin
        r = requests.post(url, json=GOOD, headers={"origin": origin}, auth=("me", "pw"), timeout=60)
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == origin
        other = requests.options(
            url, headers=headers | {"origin": "http://evil.example"}, timeout=10
        )
        assert "access-control-allow-origin" not in other.headers


def test_startup_line_names_loopback() -> None:
    from genmodels.serve.server import startup_line

    assert "loopback only" in startup_line("127.0.0.1", 7860, False)
    assert "loopback only" in startup_line("::1", 7860, False)
    assert "anyone" in startup_line("0.0.0.0", 7860, False)
    assert "auth required" in startup_line("0.0.0.0", 7860, True)


def test_queue_full_is_429_and_stop_answers_waiting_requests(ckpts, tmp_path) -> None:
    import threading

    server = ServerThread(create_app(make_config(ckpts, tmp_path, max_queue=1))).start()
    url = f"{server.url}/sdapi/v1/txt2img"
    results = []
    long = dict(GOOD, steps=5000)
    threads = [
        threading.Thread(
            target=lambda: results.append(requests.post(url, json=long, timeout=60).status_code)
        )
        for _ in range(2)
    ]
    threads[0].start()
    wait_for = lambda key, n: _wait(server, key, n)  # noqa: E731
    wait_for("job_count", 1)
    threads[1].start()
    wait_for("queue_pending", 1)
    assert requests.post(url, json=GOOD, timeout=60).status_code == 429
    server.stop()  # interrupts the running job; the queued one gets 503
    for t in threads:
        t.join(30)
    assert sorted(results) == [200, 503]
    assert port_closed(server.port)


def _wait(server, key: str, n: int) -> None:
    import time

    deadline = time.monotonic() + 30
    while requests.get(f"{server.url}/sdapi/v1/progress", timeout=10).json()["state"][key] < n:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_mask_of_another_size_is_resized(server) -> None:
    mask = b64(Image.fromarray(np.full((32, 32), 255, np.uint8)))
    r = requests.post(
        f"{server.url}/sdapi/v1/img2img",
        json=dict(GOOD, init_images=[IMAGE], mask=mask),
        timeout=60,
    )
    assert r.status_code == 200, r.text[:300]


def test_a_failure_inside_the_library_is_json_and_the_server_goes_on(server, monkeypatch) -> None:
    from genmodels.pipelines import generate

    def broken(*args, **kwargs):
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(generate, "txt2img", broken)
    r = requests.post(f"{server.url}/sdapi/v1/txt2img", json=GOOD, timeout=60)
    assert r.status_code == 500 and r.json() == {"error": "RuntimeError", "detail": "simulated bug"}
    monkeypatch.undo()
    alive(server)
