"""The web page in a real browser: Debian's headless Chromium through Playwright's Python API.

Skipped only when no ``chromium`` is installed (CI installs it). Screenshots go to pytest's
temporary folder, or to ``$GENMODELS_SCREENSHOTS`` (``docs/images`` for the README)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from .conftest import require_serve

require_serve()
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium on PATH (apt-get install chromium; .ci/run does)"
)
sync_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture()
def page(browser, server):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(server.url + "/")
    page.wait_for_function("document.querySelector('#sampler').options.length > 5")
    yield page
    context.close()
    assert not errors, errors


def shots_dir(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("GENMODELS_SCREENSHOTS", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def fill(page, **values) -> None:
    for key, value in values.items():
        page.fill(f"#{key}", str(value))


def test_keyboard_form_generate_gallery_and_send_to_form(page, tmp_path) -> None:
    page.focus("#prompt")
    page.keyboard.type("a lighthouse at dusk")
    page.keyboard.press("Tab")  # focus order: prompt -> negative prompt -> sampler ...
    assert page.evaluate("document.activeElement.id") == "negative_prompt"
    page.keyboard.type("blurry")
    fill(page, steps=6, width=64, height=64, seed=42, batch_size=2)
    page.select_option("#sampler", "DPM++ 2M")
    page.select_option("#scheduler", "karras")
    page.focus("#generate")
    page.keyboard.press("Enter")
    page.wait_for_selector("#gallery li:nth-child(2)", timeout=30_000)
    texts = page.locator("#gallery .infotext").all_inner_texts()
    assert "a lighthouse at dusk" in texts[0] and "Seed: 42" in texts[0] and "Seed: 43" in texts[1]
    assert "Sampler: DPM++ 2M" in texts[0] and "Schedule type: Karras" in texts[0]
    assert page.locator("#gallery img").first.evaluate("im => im.naturalWidth") == 64
    assert page.inner_text("#progress-text").startswith("Done")
    folder = shots_dir(tmp_path)
    page.screenshot(path=str(folder / "serve-wide.png"), full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # no sideways scroll
    page.screenshot(path=str(folder / "serve-narrow.png"), full_page=True)
    fill(page, prompt="something else", seed=1, steps=30)
    page.select_option("#sampler", "Euler")
    page.locator("#gallery .to-form").first.focus()
    page.keyboard.press("Enter")
    page.wait_for_function("document.querySelector('#prompt').value === 'a lighthouse at dusk'")
    assert page.input_value("#seed") == "42" and page.input_value("#steps") == "6"
    assert page.input_value("#sampler") == "DPM++ 2M"
    assert page.input_value("#negative_prompt") == "blurry"


def test_interrupt_a_long_job(page) -> None:
    fill(page, prompt="long", steps=5000, width=64, height=64, seed=3)
    page.click("#generate")
    page.wait_for_function("document.querySelector('#progress').value > 0.02", timeout=30_000)
    assert page.is_visible("#preview")  # the live preview of the x0 estimate
    assert page.is_enabled("#interrupt") and page.is_disabled("#generate")
    page.click("#interrupt")
    page.wait_for_selector("#gallery li", timeout=30_000)
    assert "Steps: 5000" in page.inner_text("#gallery .infotext")
    page.wait_for_function("!document.querySelector('#generate').disabled")


def test_inpaint_with_a_keyboard_drawn_mask(page, tmp_path) -> None:
    rng = np.random.default_rng(1)
    path = tmp_path / "input.png"
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    page.check("input[name=mode][value=inpaint]")
    page.set_input_files("#init_image", str(path))
    page.wait_for_selector("#mask-canvas", state="visible")
    assert page.input_value("#width") == "64"
    fill(page, prompt="repaint", steps=4, seed=5, brush=24)
    page.focus("#mask-canvas")
    page.keyboard.press("Space")  # paint at the cursor (the centre)
    for _ in range(3):
        page.keyboard.press("ArrowRight")
    painted = page.evaluate("""() => {
        const c = document.querySelector('#mask-canvas');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0; for (let i = 3; i < d.length; i += 4) n += d[i] > 0; return n; }""")
    assert 200 < painted < 64 * 64
    page.click("#generate")
    page.wait_for_selector("#gallery li", timeout=30_000)
    assert "Denoising strength" in page.inner_text("#gallery .infotext")
    page.screenshot(path=str(shots_dir(tmp_path) / "serve-inpaint.png"), full_page=True)


def test_switch_the_checkpoint_from_the_page(page, api) -> None:
    first = api.get_options()["sd_model_checkpoint"]
    assert page.input_value("#model") == first
    other = page.locator("#model option").nth(1).get_attribute("value")
    try:
        page.select_option("#model", other)
        page.wait_for_function(
            "document.querySelector('#model-status').textContent.startsWith('Loaded')",
            timeout=30_000,
        )
        assert api.get_options()["sd_model_checkpoint"].startswith("other.safetensors")
        assert page.input_value("#model").startswith("other.safetensors [")  # hashed now
    finally:
        api.util_set_model(first, find_closest=False)
