"""The serve parts on their own: base64 codec, checkpoint catalogue, sampler / scheduler
lists (every name listed is accepted back), --api-auth parsing."""

from __future__ import annotations

import base64
import io
import shutil

import pytest
from PIL import Image

from genmodels.diffusion.samplers.registry import SAMPLER_INFO, resolve_sampler
from genmodels.diffusion.schedules import SCHEDULERS, resolve_scheduler
from genmodels.serve.catalog import Catalog
from genmodels.serve.codec import b64_png, decode_b64, decode_b64_image
from genmodels.serve.config import parse_auth
from genmodels.serve.listing import sampler_items, scheduler_items


def test_codec_round_trip_and_refusals() -> None:
    image = Image.new("RGB", (5, 3), (1, 2, 3))
    text = b64_png(image, "a cat\nSteps: 2, Sampler: Euler, Seed: 1")
    back = decode_b64_image("data:image/png;base64," + text, "img")
    assert back.size == (5, 3) and back.getpixel((0, 0)) == (1, 2, 3)
    with Image.open(io.BytesIO(base64.b64decode(text))) as im:
        assert im.info["parameters"].startswith("a cat")
    assert decode_b64(text[:8] + "\n" + text[8:], "x") == base64.b64decode(text)  # blanks ok
    for bad, needle in (("", "expected"), ("abc", "malformed"), ("@@@@", "malformed"),
                        (None, "expected")):  # fmt: skip
        with pytest.raises(ValueError, match=needle):
            decode_b64(bad, "init_images[0]")
    with pytest.raises(ValueError, match="pixels"):
        decode_b64_image(b64_png(Image.new("L", (100, 100))), "mask", "L", max_pixels=99 * 100)
    with pytest.raises(ValueError, match="cannot read image 'x'"):
        decode_b64_image(base64.b64encode(b"not an image").decode(), "x")


def test_catalog_titles_hashes_and_lookup(ckpts, tmp_path) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copy(ckpts["b"], folder / "b.safetensors")
    (folder / "notes.txt").write_text("not a checkpoint")
    catalog = Catalog(ckpts["a"], folder)
    a, b = catalog.entries()
    assert (a.title, b.title, b.model_name) == ("tiny.safetensors", "b.safetensors", "b")
    b = catalog.hash(b)
    assert b.title == f"b.safetensors [{b.sha256[:10]}]" and len(b.sha256) == 64
    assert catalog.entries()[1].sha256 == b.sha256  # cached
    for name in (b.title, "b.safetensors", "b", b.sha256[:10], str(folder / "b.safetensors")):
        assert catalog.find(name).path == b.path
    with pytest.raises(ValueError, match="unknown checkpoint 'zzz'; available: 'tiny"):
        catalog.find("zzz")


def test_every_listed_name_is_accepted_back() -> None:
    samplers = sampler_items()
    assert len(samplers) == len(SAMPLER_INFO)
    for item in samplers:
        assert resolve_sampler(item["name"])[0] == item["aliases"][0]
    schedulers = scheduler_items()
    assert [s["name"] for s in schedulers] == ["automatic", *SCHEDULERS]
    for item in schedulers[1:]:
        for name in [item["name"], item["label"], *(item["aliases"] or [])]:
            assert resolve_scheduler(name) == item["name"]


def test_parse_auth() -> None:
    assert parse_auth(None) == ()
    assert parse_auth("me:pa:ss, you:x") == (("me", "pa:ss"), ("you", "x"))
    for bad in ("me", ":x", "me:"):
        with pytest.raises(ValueError, match="--api-auth"):
            parse_auth(bad)
