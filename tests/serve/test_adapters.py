"""LoRAs and embeddings through the server: ``<lora:NAME:W>`` tags resolved in ``--lora-dir``
give the library's pixels with that LoRA, the next request without the tag gets the base model
back, a tag naming no file is a 400, and ``/sdapi/v1/loras`` lists the folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import requests

from .conftest import require_serve

require_serve()

from genmodels.pipelines.generate import txt2img  # noqa: E402
from genmodels.pipelines.loading import load_pipeline  # noqa: E402
from tests.adapters.helpers import kohya_lora  # noqa: E402

from .conftest import SIZE, make_config, port_closed  # noqa: E402


@pytest.fixture(scope="module")
def lora_server(ckpts, tmp_path_factory):
    from genmodels.serve.app import create_app
    from genmodels.serve.server import ServerThread

    root = tmp_path_factory.mktemp("serve-loras")
    pipe = load_pipeline(ckpts["a"], dtype="fp32", device="cpu")
    kohya_lora(pipe, root / "ink.safetensors", seed=4, rank=4, alpha=4.0,
               select="attn|proj|q_proj|fc")  # fmt: skip
    config = make_config(ckpts, root / "out", lora_dirs=(root,))
    thread = ServerThread(create_app(config)).start()
    yield thread, pipe, root
    thread.stop()
    assert port_closed(thread.port)


def _txt2img(url: str, prompt: str) -> requests.Response:
    body = dict(prompt=prompt, steps=3, sampler_name="Euler", seed=5, cfg_scale=5, **SIZE)
    return requests.post(f"{url}/sdapi/v1/txt2img", json=body, timeout=120)


def _pixels(response: requests.Response) -> np.ndarray:
    import base64
    import io

    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0]))))


def test_prompt_tags_apply_the_lora_and_the_next_request_gets_the_base_model(lora_server):
    thread, pipe, root = lora_server
    url = f"http://{thread.host}:{thread.port}"
    kw = dict(steps=3, sampler="euler", seed=5, cfg_scale=5, **SIZE)
    base = np.asarray(txt2img(pipe, "a castle", **kw).images[0])
    pipe.load_lora(root / "ink.safetensors", 0.7)
    with_lora = np.asarray(txt2img(pipe, "a castle", **kw).images[0])
    pipe.unload_loras()
    assert not np.array_equal(base, with_lora)

    tagged = _txt2img(url, "a castle <lora:ink:0.7>")
    assert tagged.status_code == 200, tagged.text
    assert np.array_equal(_pixels(tagged), with_lora)
    assert 'Lora hashes: "ink: ' in json.loads(tagged.json()["info"])["infotexts"][0]
    plain = _txt2img(url, "a castle")
    assert np.array_equal(_pixels(plain), base)  # unloaded: the original weights, bit for bit

    missing = _txt2img(url, "a castle <lora:nothere:1>")
    assert missing.status_code == 400 and "nothere" in missing.text
    listed = requests.get(f"{url}/sdapi/v1/loras", timeout=30).json()
    assert [entry["name"] for entry in listed] == ["ink"]
