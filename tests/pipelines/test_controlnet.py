"""ControlNet at generation with tiny random models: loading from every layout gives the same
model, family mismatch and corrupt files give one clear error, weight 0 / outside the step range
is exactly no control, units add up, the step range follows A1111, txt2img / img2img / inpaint
(9-channel too), and the A1111 infotext entries."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from genmodels.checkpoints.controlnet import controlnet_family
from genmodels.checkpoints.io import CheckpointError
from genmodels.configs.unet import UNET_PRESETS
from genmodels.pipelines.build import build_pipeline
from genmodels.pipelines.controlnet import (
    ControlSchedule,
    ControlUnit,
    load_controlnet,
    step_index,
)
from genmodels.pipelines.controlnet_infotext import (
    control_infotext,
    legacy_model_hash,
    parse_control_infotext,
)
from genmodels.pipelines.generate import img2img, inpaint, txt2img
from genmodels.pipelines.metadata import format_infotext, parameters_from_infotext

from .controlnet_files import controlnet_for, save_diffusers, save_ldm

RUN = dict(width=16, height=16, steps=3, seed=3, cfg_scale=5.0)


@pytest.fixture(scope="module")
def sd1():
    return build_pipeline()


@pytest.fixture(scope="module")
def files(sd1, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cn")
    model = controlnet_for(sd1)
    return {
        "model": model,
        "ldm": save_ldm(model, root / "cn_ldm.safetensors"),
        "bare": save_ldm(model, root / "cn_bare.pth", prefix=""),
        "folder": save_diffusers(model, root / "cn_diffusers"),
        "diffusers_file": _diffusers_single_file(
            root / "cn_diffusers", root / "cn_dkeys.safetensors"
        ),
        "hint": torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)),
    }


def _diffusers_single_file(folder: Path, path: Path) -> Path:
    """diffusers key names in one file (as many SDXL ControlNets are shared)."""
    shutil.copy(folder / "diffusion_pytorch_model.safetensors", path)
    return path


def test_every_layout_loads_the_same_model(sd1, files) -> None:
    layouts = ("ldm", "bare", "folder", "diffusers_file")
    loaded = [load_controlnet(files[k], sd1) for k in layouts]
    ref = files["model"].state_dict()
    for cn in loaded:
        assert cn.model.config == files["model"].config, cn.source
        sd = cn.model.state_dict()
        assert set(sd) == set(ref)
        assert all(torch.equal(sd[k], ref[k]) for k in ref), cn.source
    assert loaded[0].label == f"cn_ldm [{legacy_model_hash(files['ldm'])}]"
    assert loaded[2].name == "cn_diffusers" and len(loaded[2].hash) == 8


def test_family_mismatch_is_one_clear_error(sd1, tmp_path) -> None:
    xl = build_pipeline(model_type="sdxl-base")
    path = save_ldm(controlnet_for(xl), tmp_path / "xl_cn.safetensors")
    with pytest.raises(CheckpointError) as err:
        load_controlnet(path, sd1)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg
    assert "Stable Diffusion XL base" in msg and "Stable Diffusion 1.x" in msg


def test_family_from_released_widths() -> None:
    assert controlnet_family(UNET_PRESETS["sd1"]) == "sd1"
    assert controlnet_family(UNET_PRESETS["sd2"]) == "sd2"
    assert controlnet_family(UNET_PRESETS["sdxl-base"]) == "sdxl-base"
    assert controlnet_family(UNET_PRESETS["tiny"]) is None


@pytest.mark.parametrize("kind", ["garbage", "truncated", "checkpoint", "missing"])
def test_bad_files_are_one_clear_error(sd1, files, tmp_path, kind: str) -> None:
    path = tmp_path / "bad.safetensors"
    if kind == "garbage":
        path.write_bytes(b"\x00" * 100)
    elif kind == "truncated":
        path.write_bytes(files["ldm"].read_bytes()[:5000])
    elif kind == "checkpoint":
        save_ldm(files["model"], path, prefix="model.diffusion_model.")
    else:
        path = tmp_path / "none.safetensors"
    with pytest.raises(CheckpointError) as err:
        load_controlnet(path, sd1)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_weight_zero_and_outside_the_range_are_exactly_no_control(sd1, files) -> None:
    cn = load_controlnet(files["ldm"], sd1)
    plain = txt2img(sd1, "a cat", **RUN).latents
    hint = files["hint"]
    zero = txt2img(sd1, "a cat", **RUN, control=[ControlUnit(cn, hint, weight=0.0)])
    # 3 steps: fractions 0, 1/3, 2/3; a range of (0.7, 1.0) holds none of them
    late = txt2img(sd1, "a cat", **RUN, control=[ControlUnit(cn, hint, start=0.7)])
    on = txt2img(sd1, "a cat", **RUN, control=[ControlUnit(cn, hint)])
    assert torch.equal(zero.latents, plain) and torch.equal(late.latents, plain)
    assert (on.latents - plain).abs().max() > 1e-3


def test_units_add_up(sd1, files) -> None:
    cn = load_controlnet(files["ldm"], sd1)
    hint = files["hint"]
    one = txt2img(sd1, "a cat", **RUN, control=[ControlUnit(cn, hint, weight=0.8)])
    halves = [ControlUnit(cn, hint, weight=0.5), ControlUnit(cn, hint, weight=0.3)]
    two = txt2img(sd1, "a cat", **RUN, control=halves)
    torch.testing.assert_close(two.latents, one.latents, atol=1e-4, rtol=1e-4)


def test_step_range_follows_a1111() -> None:
    sigmas = torch.tensor([10.0, 8, 6, 4, 3, 2, 1.5, 1, 0.5, 0.2, 0.0])  # 10 steps
    assert [step_index(sigmas, float(s)) for s in sigmas[:-1]] == list(range(10))
    assert step_index(sigmas, 9.0) == 0  # a 2nd-order evaluation inside step 0 (10 -> 8)
    unit = ControlUnit(object(), None, weight=0.7, start=0.2, end=0.5)  # type: ignore[arg-type]
    schedule = ControlSchedule(lambda *a, **k: None, [unit], sigmas)
    active = [i for i in range(10) if schedule.weights_at(float(sigmas[i]))[0] == 0.7]
    assert active == [2, 3, 4, 5]  # A1111: start <= i / n <= end


@pytest.mark.parametrize("mode", ["img2img", "inpaint", "inpaint-9ch"])
def test_img2img_and_inpaint(sd1, files, mode: str, tmp_path) -> None:
    pipe = build_pipeline(inpainting=True) if mode == "inpaint-9ch" else sd1
    cn_path = files["ldm"]
    if mode == "inpaint-9ch":
        cn_path = save_ldm(controlnet_for(pipe), tmp_path / "cn9.safetensors")
    cn = load_controlnet(cn_path, pipe)
    image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., 8:] = 1
    kw = dict(RUN, strength=0.6) if mode == "img2img" else RUN
    run = img2img if mode == "img2img" else inpaint
    args = (pipe, image, "a cat") if mode == "img2img" else (pipe, image, mask, "a cat")
    plain = run(*args, **kw)
    unit = ControlUnit(cn, files["hint"][0], weight=1.5)
    controlled = run(*args, **kw, control=[unit])
    assert (controlled.latents - plain.latents).abs().max() > 1e-3
    assert "ControlNet 0" in controlled.parameters[0].extra


def test_control_image_is_resized_and_checked(sd1, files, tmp_path) -> None:
    from PIL import Image

    cn = load_controlnet(files["ldm"], sd1)
    path = tmp_path / "big.png"
    Image.new("L", (40, 24), 128).save(path)  # grey, another size: converted and resized
    out = txt2img(sd1, "a cat", **RUN, control=[ControlUnit(cn, path)])
    assert out.latents.shape[-2:] == (4, 4)
    for bad in (dict(start=0.6, end=0.4), dict(weight=float("nan"))):
        with pytest.raises(ValueError, match="control unit 0"):
            txt2img(sd1, "a cat", **RUN, control=[ControlUnit(cn, path, **bad)])


def test_infotext_entries_round_trip(sd1, files) -> None:
    cn = load_controlnet(files["ldm"], sd1)
    hint = files["hint"]
    units = [ControlUnit(cn, hint, weight=0.45, start=0.1, end=0.8), ControlUnit(cn, hint)]
    extra = control_infotext(units)
    assert extra["ControlNet 0"] == (
        f"Module: none, Model: {cn.label}, Weight: 0.45, Resize Mode: Just Resize, "
        "Processor Res: 512, Threshold A: 0.5, Threshold B: 0.5, Guidance Start: 0.1, "
        "Guidance End: 0.8, Pixel Perfect: False, Control Mode: Balanced"
    )
    out = txt2img(sd1, "a cat", **RUN, control=units)
    text = format_infotext(out.parameters[0])
    assert 'ControlNet 0: "Module: none, Model: cn_ldm [' in text
    records = parse_control_infotext(parameters_from_infotext(text).extra)
    assert [(r.name, r.hash, r.weight, r.start, r.end) for r in records] == [
        ("cn_ldm", cn.hash, 0.45, 0.1, 0.8), ("cn_ldm", cn.hash, 1.0, 0.0, 1.0)]  # fmt: skip
    older = {"ControlNet 1": "preprocessor: canny, model: control_sd15_canny [fef5e48e], "
             "weight: 0.6, starting/ending: (0.2, 0.9), resize mode: Crop and Resize"}  # fmt: skip
    (r,) = parse_control_infotext(older)
    assert (r.index, r.module, r.name, r.hash, r.weight, r.start, r.end) == (
        1, "canny", "control_sd15_canny", "fef5e48e", 0.6, 0.2, 0.9)  # fmt: skip


def test_sdxl_controlnet_gets_the_vector_conditioning() -> None:
    """An SDXL ControlNet takes the pooled text + size vector y (diffusers: text_embeds and
    time_ids through its addition embedding): changing only its label_emb changes the image."""
    import copy

    from genmodels.pipelines.controlnet import LoadedControlNet

    xl = build_pipeline(model_type="sdxl-base")
    model = controlnet_for(xl)
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.label_emb[0][0].weight.mul_(-1)
    hint = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    plain = txt2img(xl, "a cat", **RUN).latents
    a, b = (txt2img(xl, "a cat", **RUN, control=[ControlUnit(
        LoadedControlNet(m, "xl", None, "sdxl-base", "memory"), hint)]).latents
        for m in (model, other))  # fmt: skip
    assert (a - plain).abs().max() > 1e-3 and (a - b).abs().max() > 1e-4


def test_bf16_pipeline_gets_a_bf16_controlnet(files) -> None:
    pipe = build_pipeline(dtype=torch.bfloat16)
    cn = load_controlnet(files["ldm"], pipe)
    assert all(p.dtype == torch.bfloat16 for p in cn.model.parameters())
    ref = build_pipeline()
    unit = ControlUnit(load_controlnet(files["ldm"], ref), files["hint"])
    expected = txt2img(ref, "a cat", **RUN, control=[unit]).latents
    actual = txt2img(pipe, "a cat", **RUN, control=[ControlUnit(cn, files["hint"])]).latents
    assert (actual - expected).abs().max() < 0.1 * expected.abs().max()
