"""LoRA parity with diffusers + PEFT: the same LoRA file on the same tiny SD 1.x / 2.x / SDXL
model, merged by us (``pipe.load_lora``) and by diffusers (``load_lora_weights`` +
``fuse_lora``), gives the same UNet and text-encoder outputs (fp32, 1e-4); for SD 2.x the
OpenCLIP text encoder is adapted in our HF layout. kohya files use kohya's own UNet naming
(diffusers paths for SD 1.x / 2.x, LDM / sgm paths for SDXL) and hold LoCon conv layers (3x3
kernels in ``lora_down``); the PEFT files are written by diffusers' ``save_lora_weights`` from
PEFT layers with ``lora_alpha != r`` (the scale comes from the file's ``lora_adapter_metadata``)."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import pytest
import torch

from genmodels.pipelines.loading import load_pipeline
from tests.adapters.helpers import kohya_lora, text_models
from tests.checkpoints.builders import build_reference
from tests.pipelines.test_loading import _unet_inputs

diffusers = pytest.importorskip("diffusers")
peft = pytest.importorskip("peft")

TOL = dict(atol=1e-4, rtol=1e-4)
# all linear layers and convs of the transformer and resnet blocks (LoCon), plus the samplers
KOHYA_SELECT = r"attn|ff\.net|proj_|in_layers|out_layers|emb_layers|skip|\.op$|\.conv$|_proj|fc"
UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "conv1", "conv2", "ff.net.2"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1"]


@pytest.fixture(scope="module", params=["sd1", "sd2", "sdxl-base"])
def model(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    refs = build_reference(request.param, root / "diffusers")
    return request.param, root, refs


def _reference_pipeline(family: str, refs: dict):
    refs = {k: copy.deepcopy(v) for k, v in refs.items()}
    sched = diffusers.EulerDiscreteScheduler()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if not family.startswith("sdxl"):
            return diffusers.StableDiffusionPipeline(
                vae=refs["vae"], text_encoder=refs["text_encoder"], tokenizer=None,
                unet=refs["unet"], scheduler=sched, safety_checker=None,
                feature_extractor=None, requires_safety_checker=False,
            )  # fmt: skip
        return diffusers.StableDiffusionXLPipeline(
            vae=refs["vae"], text_encoder=refs["text_encoder"],
            text_encoder_2=refs["text_encoder_2"], tokenizer=None, tokenizer_2=None,
            unet=refs["unet"], scheduler=sched,
        )  # fmt: skip


@torch.no_grad()
def _check(pipe, ref) -> None:
    ours, theirs = _unet_inputs(pipe, ref.unet)
    torch.testing.assert_close(pipe.unet(**ours), ref.unet(**theirs).sample, **TOL)
    ids = pipe.text_encoder.tokenize(["a photo of a cat, 4k", ""])
    folders = [ref.text_encoder] + ([ref.text_encoder_2] if hasattr(ref, "text_encoder_2") else [])
    for model, theirs_te, tokens in zip(text_models(pipe), folders, ids):
        got = model(tokens[:, 0], output_hidden_states=True)
        want = theirs_te(tokens[:, 0], output_hidden_states=True)
        torch.testing.assert_close(got.last_hidden_state, want.last_hidden_state, **TOL)
        torch.testing.assert_close(got.hidden_states[-2], want.hidden_states[-2], **TOL)


def test_kohya_locon_parity(model, tmp_path) -> None:
    family, root, refs = model
    pipe = load_pipeline(root / "diffusers")
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    path = tmp_path / "style.safetensors"
    made = kohya_lora(pipe, path, select=KOHYA_SELECT)
    assert any(down.ndim == 4 and down.shape[-1] == 3 for down, _ in made.values())  # LoCon
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every key is placed
        applied = pipe.load_lora(path, 0.7)
    assert applied.modules == len(made) and applied.name == "style"
    ref = _reference_pipeline(family, refs)
    ref.load_lora_weights(str(path))
    ref.fuse_lora(lora_scale=0.7)
    _check(pipe, ref)
    pipe.unload_loras()
    for k, v in pipe.unet.state_dict().items():
        assert torch.equal(v, before[k]), k


def _peft_file(family: str, refs: dict, path: Path) -> None:
    """A diffusers PEFT LoRA file written by diffusers itself."""
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict

    layers, meta = {}, {}
    folders = ["unet", "text_encoder"] + (["text_encoder_2"] if family == "sdxl-base" else [])
    for i, folder in enumerate(folders):
        targets = UNET_TARGETS if folder == "unet" else TEXT_TARGETS
        cfg = LoraConfig(r=4, lora_alpha=8 - 3 * i, target_modules=targets,
                         init_lora_weights=False)  # fmt: skip
        torch.manual_seed(10 + i)
        module = inject_adapter_in_model(cfg, copy.deepcopy(refs[folder]))
        with torch.no_grad():
            for name, p in module.named_parameters():
                if "lora_" in name:
                    p.mul_(0.3)
        layers[f"{folder}_lora_layers"] = get_peft_model_state_dict(module)
        meta[f"{folder}_lora_adapter_metadata"] = cfg.to_dict()
    xl = family == "sdxl-base"
    cls = diffusers.StableDiffusionXLPipeline if xl else diffusers.StableDiffusionPipeline
    cls.save_lora_weights(str(path.parent), weight_name=path.name, **layers, **meta)


def test_peft_parity(model, tmp_path) -> None:
    family, root, refs = model
    pipe = load_pipeline(root / "diffusers")
    path = tmp_path / "peft.safetensors"
    _peft_file(family, refs, path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pipe.load_lora(path, 0.6)
    ref = _reference_pipeline(family, refs)
    ref.load_lora_weights(str(path))
    ref.fuse_lora(lora_scale=0.6)
    _check(pipe, ref)
