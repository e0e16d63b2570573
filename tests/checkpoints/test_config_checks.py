"""Issue 18: crafted configs are refused before any model is built, naming the file and key."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from genmodels.checkpoints.config_checks import count_indices
from genmodels.checkpoints.convert import convert_checkpoint, read_checkpoint
from genmodels.checkpoints.io import (
    CheckpointError,
    load_state_dict,
    read_metadata,
    save_state_dict,
)
from genmodels.checkpoints.native import METADATA_KEY
from genmodels.checkpoints.taming import (
    gpt_config_from_state_dict,
    vq_config_from_taming_state_dict,
)
from tests.checkpoints.builders import build_reference


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("model")
    build_reference("sd1", root / "ref")
    convert_checkpoint(root / "ref", root / "m.safetensors", "safetensors")
    return root


def _edit_json(path: Path, **changes: object) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def _fresh_folder(model: Path, tmp_path: Path) -> Path:
    out = tmp_path / "d"
    convert_checkpoint(model / "m.safetensors", out, "diffusers")
    return out


@pytest.mark.parametrize(
    ("component", "changes", "message"),
    [
        ("unet", {"layers_per_block": 100000}, r"layers_per_block=100000 is out of range"),
        ("unet", {"layers_per_block": 2}, r"layers_per_block=2 does not match the weights "
                                          r"\(down_blocks.0.resnets.N gives 1\)"),
        ("unet", {"block_out_channels": [32, 64, 128]}, r"block_out_channels \(levels\)=3"),
        ("unet", {"block_out_channels": [2**40, 64]}, r"block_out_channels=.* out of range"),
        ("unet", {"transformer_layers_per_block": 9}, "transformer_layers_per_block=9 does not"),
        ("vae", {"layers_per_block": 5000}, "layers_per_block=5000 is out of range"),
        ("vae", {"latent_channels": 16}, r"latent_channels=16 does not match .*quant_conv"),
        ("text_encoder", {"num_hidden_layers": 100000}, "num_hidden_layers=100000 is out of"),
        ("text_encoder", {"hidden_size": 64}, "hidden_size=64 does not match"),
    ],
)  # fmt: skip
def test_diffusers_config_checked_against_weights(
    model: Path, tmp_path: Path, component: str, changes: dict, message: str
) -> None:
    out = _fresh_folder(model, tmp_path)
    _edit_json(out / component / "config.json", **changes)
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match=message) as err:
        read_checkpoint(out)
    assert time.perf_counter() - start < 5  # refused before building or converting anything
    assert str(out / component / "config.json") in str(err.value)


def _with_metadata(model: Path, tmp_path: Path, section: str, **changes: object) -> Path:
    meta = read_metadata(model / "m.safetensors")
    data = json.loads(meta[METADATA_KEY])
    data[section].update(changes)
    path = tmp_path / "crafted.safetensors"
    save_state_dict(load_state_dict(model / "m.safetensors"), path,
                    {METADATA_KEY: json.dumps(data)})  # fmt: skip
    return path


@pytest.mark.parametrize(
    ("section", "changes", "message"),
    [
        ("unet", {"num_res_blocks": 2000}, "unet.num_res_blocks=2000 is out of range"),
        ("unet", {"num_res_blocks": 2}, r"channel_mult/num_res_blocks='6 input blocks' does "
                                        r"not match the weights .*'4 input blocks'"),
        ("unet", {"model_channels": 2**20}, "unet.model_channels=1048576 is out of range"),
        ("unet", {"transformer_depth": 3}, r"unet.transformer_depth \(level 0\)=3 does not"),
        ("vae", {"num_res_blocks": 7}, "vae.num_res_blocks=7 does not match"),
        ("vae", {"ch": 2**20}, "vae.widths=.* is out of range"),
    ],
)  # fmt: skip
def test_genmodels_metadata_checked_against_weights(
    model: Path, tmp_path: Path, section: str, changes: dict, message: str
) -> None:
    path = _with_metadata(model, tmp_path, section, **changes)
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match=message) as err:
        read_checkpoint(path)
    assert time.perf_counter() - start < 5
    assert "crafted.safetensors" in str(err.value) and "genmodels metadata" in str(err.value)


def test_inferred_sizes_never_come_from_one_key(model: Path, tmp_path: Path) -> None:
    sd = load_state_dict(model / "m.safetensors")
    bare = tmp_path / "bare.safetensors"  # no metadata: the architecture is read off the keys
    crafted = dict(sd)
    crafted["model.diffusion_model.input_blocks.1.1.transformer_blocks.99999.x"] = torch.zeros(1)
    save_state_dict(crafted, bare)
    with pytest.raises(CheckpointError, match=r"bare.safetensors: .*not consecutive"):
        read_checkpoint(bare)
    crafted = dict(sd)
    crafted["model.diffusion_model.input_blocks.0.0.weight"] = torch.zeros(10**6, 0, 3, 3)
    save_state_dict(crafted, bare)
    with pytest.raises(CheckpointError, match=r"input_blocks.0.0.weight.*implausible shape"):
        read_checkpoint(bare)


def test_count_indices() -> None:
    keys = {f"blocks.{i}.w": torch.zeros(1) for i in range(3)}
    assert count_indices(keys, r"blocks\.(\d+)\.", "f") == 3
    assert count_indices({}, r"blocks\.(\d+)\.", "f") == 0
    with pytest.raises(CheckpointError, match="f: the indices N of blocks.N. are not consecutive"):
        count_indices({**keys, "blocks.7.w": torch.zeros(1)}, r"blocks\.(\d+)\.", "f")


def test_taming_configs_bounded() -> None:
    sd = {"encoder.conv_in.weight": torch.zeros(10**6, 0, 3, 3)}
    with pytest.raises(CheckpointError, match="implausible shape"):
        vq_config_from_taming_state_dict(sd, source="v.ckpt")
    gpt = {"transformer.tok_emb.weight": torch.zeros(8, 4),
           "transformer.pos_emb": torch.zeros(1, 4, 4),
           "transformer.blocks.0.attn.mask": torch.ones(1, 1, 4, 4),
           "transformer.blocks.5000.ln1.weight": torch.zeros(4)}  # fmt: skip
    with pytest.raises(CheckpointError, match="not consecutive"):
        gpt_config_from_state_dict(gpt, n_head=1)
