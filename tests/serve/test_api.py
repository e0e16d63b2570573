"""The A1111 API driven by the real ``webuiapi`` client: results equal the library's, infotexts
in the PNGs, img2img / inpaint, every listed sampler and scheduler accepted, png-info, switching
checkpoints, and 4 concurrent clients each getting their own images."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from .conftest import require_serve

require_serve()

from genmodels.pipelines.generate import img2img, inpaint, txt2img  # noqa: E402
from genmodels.pipelines.metadata import parameters_from_infotext  # noqa: E402

from .conftest import SIZE  # noqa: E402


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def library_pixels(result) -> list[np.ndarray]:
    return [pixels(im) for im in result.images]


def test_txt2img_matches_the_library_with_a1111_info(api, pipe) -> None:
    r = api.txt2img(
        prompt="a (red:1.2) cat",
        negative_prompt="blurry",
        seed=7,
        batch_size=2,
        cfg_scale=5,
        sampler_name="DPM++ 2M",
        scheduler="karras",
        **SIZE,
    )
    info = r.info
    assert len(r.images) == 3 and info["index_of_first_image"] == 1  # grid first, as A1111
    assert r.images[0].size == (128, 64)
    assert info["all_seeds"] == [7, 8] and info["seed"] == 7
    assert info["sampler_name"] == "DPM++ 2M" and info["sd_model_name"] == "tiny"
    assert info["extra_generation_params"] == {"Schedule type": "Karras"}
    assert r.parameters["prompt"] == "a (red:1.2) cat" and r.parameters["batch_size"] == 2
    expected = txt2img(
        pipe,
        "a (red:1.2) cat",
        "blurry",
        steps=4,
        cfg_scale=5,
        sampler="dpmpp_2m",
        scheduler="karras",
        seed=7,
        batch_size=2,
        **SIZE,
    )
    for image, text, want in zip(r.images[1:], info["infotexts"], library_pixels(expected)):
        assert np.array_equal(pixels(image), want)
        assert image.info["parameters"] == text  # the PNG carries its infotext
        p = parameters_from_infotext(text)
        assert (p.prompt, p.negative_prompt, p.steps, p.cfg_scale) == (
            "a (red:1.2) cat",
            "blurry",
            4,
            5.0,
        )
        assert (p.sampler, p.scheduler, p.width, p.model_name) == ("dpmpp_2m", "karras", 64, "tiny")


def test_identical_requests_give_identical_pixels(api) -> None:
    a = api.txt2img(prompt="a dog", seed=11, **SIZE).image
    b = api.txt2img(prompt="a dog", seed=11, **SIZE).image
    c = api.txt2img(prompt="a dog", seed=12, **SIZE).image
    assert np.array_equal(pixels(a), pixels(b))
    assert not np.array_equal(pixels(a), pixels(c))


def test_random_seed_is_reported_and_reproduces(api) -> None:
    r = api.txt2img(prompt="x", seed=-1, **SIZE)
    seed = r.info["seed"]
    assert 0 <= seed < 2**32 and r.info["all_seeds"] == [seed]
    again = api.txt2img(prompt="x", seed=seed, **SIZE)
    assert np.array_equal(pixels(r.image), pixels(again.image))


@pytest.fixture(scope="module")
def init_image() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))


def test_img2img_matches_the_library(api, pipe, init_image) -> None:
    r = api.img2img(images=[init_image], prompt="a cat", denoising_strength=0.6, seed=3, **SIZE)
    want = img2img(pipe, init_image, "a cat", strength=0.6, steps=4, sampler="euler", seed=3)
    assert np.array_equal(pixels(r.image), library_pixels(want)[0])
    assert parameters_from_infotext(r.info["infotexts"][0]).denoising_strength == 0.6
    assert r.parameters["init_images"] is None  # not echoed without include_init_images


def test_inpaint_keeps_the_unmasked_pixels(api, pipe, init_image) -> None:
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[:, 32:] = 255  # repaint the right half
    mask_image = Image.fromarray(mask)
    r = api.img2img(
        images=[init_image],
        mask_image=mask_image,
        prompt="a cat",
        seed=5,
        denoising_strength=1.0,
        **SIZE,
    )
    out, src = pixels(r.image), pixels(init_image)
    assert np.array_equal(out[:, :32], src[:, :32]) and not np.array_equal(out[:, 32:], src[:, 32:])
    want = inpaint(pipe, init_image, mask_image, "a cat", strength=1.0, steps=4, seed=5)
    assert np.array_equal(out, library_pixels(want)[0])
    inverted = api.img2img(
        images=[init_image],
        mask_image=mask_image,
        prompt="a cat",
        seed=5,
        inpainting_mask_invert=1,
        **SIZE,
    )
    assert np.array_equal(pixels(inverted.image)[:, 32:], src[:, 32:])


def test_every_listed_sampler_and_scheduler_is_accepted(api) -> None:
    samplers = api.get_samplers()
    names = [s["name"] for s in samplers]
    assert {"Euler", "Euler a", "DPM++ 2M", "DPM++ 2M SDE", "UniPC", "DDIM"} <= set(names)
    assert all(set(s) == {"name", "aliases", "options"} for s in samplers)
    schedulers = api.get_schedulers()
    assert schedulers[0]["name"] == "automatic"
    assert {"karras", "exponential", "sgm_uniform"} <= {s["name"] for s in schedulers}
    for name in names:
        r = api.txt2img(prompt="x", seed=1, steps=3, sampler_name=name, width=32, height=32)
        assert r.image.size == (32, 32), name
    for s in schedulers:
        r = api.txt2img(prompt="x", seed=1, steps=3, scheduler=s["label"], width=32, height=32)
        assert r.image.size == (32, 32), s["name"]
    old_style = api.txt2img(prompt="x", seed=1, sampler_name="DPM++ 2M Karras", **SIZE)
    assert "Schedule type: Karras" in old_style.info["infotexts"][0]


def test_png_info_round_trip(api) -> None:
    r = api.txt2img(prompt="a, b: c", negative_prompt="ugly", seed=9, **SIZE)
    info = api.png_info(r.image).json
    assert info["info"] == r.info["infotexts"][0]
    p = info["parameters"]
    assert (p["Prompt"], p["Negative prompt"], p["Seed"], p["Size-1"]) == (
        "a, b: c",
        "ugly",
        "9",
        "64",
    )
    plain = Image.new("RGB", (8, 8))
    assert api.png_info(plain).json == {"info": "", "items": {}, "parameters": {}}


def test_options_switch_the_checkpoint(api, server) -> None:
    import gc
    import weakref

    models = api.get_sd_models()
    assert [m["model_name"] for m in models] == ["tiny", "other"]
    assert models[0]["title"].startswith("tiny.safetensors [") and len(models[0]["sha256"]) == 64
    assert api.util_get_current_model() == models[0]["title"]
    before = api.txt2img(prompt="x", seed=4, **SIZE)
    first = weakref.ref(server.app.server.worker.model.pipe)
    try:
        api.set_options({"sd_model_checkpoint": "other.safetensors"})
        gc.collect()
        assert first() is None  # one model in memory: the first one was released
        options = api.get_options()
        assert options["sd_model_checkpoint"].startswith("other.safetensors [")
        after = api.txt2img(prompt="x", seed=4, **SIZE)
        assert (
            after.info["sd_model_name"] == "other" and "Model: other" in after.info["infotexts"][0]
        )
        assert not np.array_equal(pixels(before.image), pixels(after.image))
    finally:
        api.util_set_model(models[0]["title"], find_closest=False)
    assert api.get_options()["sd_model_checkpoint"] == models[0]["title"]
    again = api.txt2img(prompt="x", seed=4, **SIZE)
    assert np.array_equal(pixels(before.image), pixels(again.image))


def test_four_concurrent_clients_get_their_own_images(server) -> None:
    import webuiapi

    jobs = [
        dict(prompt=f"prompt {i}", seed=100 + i, batch_size=1 + i % 2, steps=3 + i)
        for i in range(4)
    ]

    def run(job):
        client = webuiapi.WebUIApi(host=server.host, port=server.port, sampler="Euler a")
        r = client.txt2img(**job, **SIZE)
        return r.info["all_seeds"], [
            pixels(im) for im in r.images[r.info["index_of_first_image"] :]
        ]

    serial = [run(job) for job in jobs]
    for _ in range(2):
        with ThreadPoolExecutor(4) as pool:
            concurrent = list(pool.map(run, jobs))
        for (seeds, images), (want_seeds, want) in zip(concurrent, serial):
            assert seeds == want_seeds
            assert all(np.array_equal(a, b) for a, b in zip(images, want))


def test_save_images_writes_pngs_with_parameters(api, server) -> None:
    outdir = server.app.server.config.outdir
    r = api.txt2img(prompt="saved", seed=21, save_images=True, **SIZE)
    files = sorted(outdir.glob("*-21.png"))
    assert len(files) == 1
    with Image.open(files[0]) as im:
        assert im.info["parameters"] == r.info["infotexts"][0]
    api.txt2img(prompt="not saved", seed=22, **SIZE)
    assert not list(outdir.glob("*-22.png"))


def test_progress_preview_and_interrupt(api, server) -> None:
    import base64
    import threading
    import time

    done = {}
    thread = threading.Thread(
        target=lambda: done.update(r=api.txt2img(prompt="long", seed=1, steps=3000, **SIZE))
    )
    thread.start()
    deadline = time.monotonic() + 30
    while True:
        p = api.get_progress()
        if p["state"]["sampling_step"] > 2 and p["current_image"]:
            break
        assert time.monotonic() < deadline, p
        time.sleep(0.05)
    assert 0 < p["progress"] < 1 and p["eta_relative"] > 0
    assert p["state"]["job"] == "txt2img" and p["state"]["job_count"] == 1
    assert p["state"]["sampling_steps"] == 3000
    preview = Image.open(io.BytesIO(base64.b64decode(p["current_image"])))
    assert preview.size == (64, 64)
    t0 = time.monotonic()
    assert api.interrupt() == {}
    thread.join(30)
    assert time.monotonic() - t0 < 10 and not thread.is_alive()
    r = done["r"]  # A1111: the interrupted job returns its image as it was
    assert len(r.images) == 1 and r.images[0].size == (64, 64)
    idle = api.get_progress()
    assert idle["progress"] == 0 and idle["state"]["job_count"] == 0
    assert api.txt2img(prompt="after", seed=1, **SIZE).image.size == (64, 64)


def test_skip_ends_the_current_batch_only(api) -> None:
    import threading
    import time

    done = {}
    job = dict(prompt="long", seed=30, steps=3000, n_iter=2, **SIZE)
    thread = threading.Thread(target=lambda: done.update(r=api.txt2img(**job)))
    thread.start()

    def wait(job_no: int) -> None:
        deadline = time.monotonic() + 30
        while True:
            state = api.get_progress()["state"]
            if state["job_no"] == job_no and state["sampling_step"] > 1:
                return
            assert time.monotonic() < deadline, state
            time.sleep(0.05)

    wait(0)
    assert api.skip() == {}
    wait(1)  # the second batch runs
    api.skip()
    thread.join(30)
    r = done["r"]
    assert r.info["all_seeds"] == [30, 31] and len(r.images) == 3  # grid + both batches
    assert all(isinstance(path, str) for path in api.get_upscalers() + api.get_prompt_styles())


def test_openapi_schema_and_no_cdn_pages(server) -> None:
    import requests

    schema = requests.get(f"{server.url}/openapi.json", timeout=10).json()
    assert {"/sdapi/v1/txt2img", "/sdapi/v1/img2img", "/sdapi/v1/progress"} <= set(schema["paths"])
    assert requests.get(f"{server.url}/docs", timeout=10).status_code == 404
    page = requests.get(f"{server.url}/", timeout=10).text
    assert "http" not in page.replace('name="viewport"', "")  # everything is served locally
    for name in ("app.js", "style.css"):
        text = requests.get(f"{server.url}/static/{name}", timeout=10).text
        assert "https://" not in text and "http://" not in text
