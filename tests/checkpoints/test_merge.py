"""``genmodels merge``: A1111's weighted sum and add difference on tiny checkpoints, streamed
from safetensors, family-checked, recipe in the metadata, never overwriting without asking."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from genmodels.checkpoints import merge as merge_module
from genmodels.checkpoints.io import read_metadata
from genmodels.checkpoints.merge import MergeRecipe, merge_checkpoints
from genmodels.cli.main import main
from genmodels.pipelines.build import build_pipeline, save_pipeline
from genmodels.pipelines.loading import load_pipeline


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("merge")
    out = {}
    for name, seed in (("a", 0), ("b", 1), ("c", 2)):
        out[name] = root / f"{name}.safetensors"
        save_pipeline(build_pipeline(seed=seed), out[name])
    out["xl"] = root / "xl.safetensors"
    save_pipeline(build_pipeline(model_type="sdxl-base"), out["xl"])
    return out


def test_weighted_sum_and_add_difference_streamed(models, tmp_path, monkeypatch) -> None:
    def no_whole_reads(*args, **kwargs):
        raise AssertionError("safetensors inputs must be streamed, not read whole")

    monkeypatch.setattr(merge_module, "read_checkpoint", no_whole_reads)
    a, b, c = (load_file(str(models[k])) for k in "abc")
    out = merge_checkpoints([models["a"], models["b"]], tmp_path / "ws.safetensors",
                            MergeRecipe("weighted-sum", 0.3))  # fmt: skip
    merged = load_file(str(out))
    assert merged.keys() == a.keys()
    for k, v in merged.items():
        want = (0.7 * a[k].float() + 0.3 * b[k].float()) if v.is_floating_point() else a[k]
        torch.testing.assert_close(v, want.to(v.dtype), rtol=0, atol=0)
    out = merge_checkpoints(
        [models["a"], models["b"], models["c"]],
        tmp_path / "ad.safetensors",
        MergeRecipe("add-difference", 0.5, True),
    )
    merged = load_file(str(out))
    key = "model.diffusion_model.input_blocks.0.0.weight"
    want = a[key].float() + 0.5 * (b[key].float() - c[key].float())
    assert merged[key].dtype == torch.float16
    torch.testing.assert_close(merged[key], want.half(), rtol=0, atol=0)
    meta = read_metadata(out)
    recipe = json.loads(meta["sd_merge_recipe"])
    assert recipe["interp_method"] == "Add difference" and recipe["multiplier"] == 0.5
    assert recipe["save_as_half"] is True and recipe["tertiary_model_name"] == "c"
    assert len(recipe["primary_model_hash"]) == 10
    # the merged file keeps A's architecture metadata and loads as a pipeline
    assert load_pipeline(out).model_type == "sd1"


def test_other_inputs_family_check_and_overwrite(models, tmp_path, capsys) -> None:
    ckpt = tmp_path / "b.ckpt"
    torch.save({"state_dict": load_file(str(models["b"]))}, ckpt)
    out = tmp_path / "m.safetensors"
    args = ["merge", str(models["a"]), str(ckpt), "--alpha", "0.5", "--out", str(out)]
    assert main(args) == 0
    merged, a, b = load_file(str(out)), load_file(str(models["a"])), load_file(str(models["b"]))
    k = "first_stage_model.decoder.conv_out.weight"
    torch.testing.assert_close(merged[k], 0.5 * a[k] + 0.5 * b[k])
    capsys.readouterr()
    assert main(args) == 2 and "pass --overwrite" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0
    assert main(["merge", str(models["a"]), str(models["xl"]), "--alpha", "0.5", "--out",
                 str(tmp_path / "x.safetensors")]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "xl.safetensors is a Stable Diffusion XL base checkpoint" in err and "1.x" in err
    assert not (tmp_path / "x.safetensors").exists()
    assert main(["merge", str(models["a"]), str(models["b"]), "--mode", "add-difference",
                 "--alpha", "1", "--out", str(tmp_path / "y.safetensors")]) == 2  # fmt: skip
    assert "add-difference merges 3 models" in capsys.readouterr().err
    bad = tmp_path / "cut.safetensors"
    bad.write_bytes(models["b"].read_bytes()[:1000])
    assert main(["merge", str(models["a"]), str(bad), "--alpha", "0.5", "--out",
                 str(tmp_path / "z.safetensors")]) == 2  # fmt: skip
    assert "cut.safetensors" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.ckpt", "cut.safetensors",
                                                          "m.safetensors"]  # fmt: skip


def test_inpainting_add_difference(models, tmp_path, capsys) -> None:
    """A1111's rule: an inpainting A + (B - C) merges the 4 latent channels of the input conv
    and keeps A's mask / masked-image channels; a normal A with an inpainting B is refused."""
    inpaint = tmp_path / "inpaint.safetensors"
    save_pipeline(build_pipeline(inpainting=True, seed=5), inpaint)
    out = merge_checkpoints([inpaint, models["b"], models["c"]], tmp_path / "o.safetensors",
                            MergeRecipe("add-difference", 1.0))  # fmt: skip
    key = "model.diffusion_model.input_blocks.0.0.weight"
    a, b, c = (load_file(str(p))[key] for p in (inpaint, models["b"], models["c"]))
    merged = load_file(str(out))[key]
    torch.testing.assert_close(merged[:, :4], a[:, :4] + b - c)
    assert torch.equal(merged[:, 4:], a[:, 4:])
    assert load_pipeline(out).inpainting
    assert main(["merge", str(models["a"]), str(inpaint), "--alpha", "0.5", "--out",
                 str(tmp_path / "x.safetensors")]) == 2  # fmt: skip
    assert "A must be the inpainting model" in capsys.readouterr().err
