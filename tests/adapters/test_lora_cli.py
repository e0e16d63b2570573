"""LoRAs at generation: ``--lora`` / ``<lora:NAME:W>`` + ``--lora-dir``, the ``Lora hashes``
infotext (A1111's addnet hash) and ``--from-png`` applying them again."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file, save_file

from genmodels.adapters.hashes import embedding_hash, lora_hash
from genmodels.cli.generate import main
from genmodels.pipelines.build import build_pipeline, save_pipeline
from genmodels.pipelines.extra_networks import (
    LoraTag,
    apply_prompt_loras,
    parse_lora_tags,
    strip_extra_networks,
)
from genmodels.pipelines.metadata import parameters_from_infotext, read_png_parameters
from tests.adapters.helpers import kohya_lora

FAST = ["--steps", "2", "--dtype", "fp32", "--device", "cpu", "--quiet", "--width", "16",
        "--height", "16", "--seed", "3"]  # fmt: skip


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lora_cli")
    pipe = build_pipeline()
    save_pipeline(pipe, root / "tiny.safetensors")
    (root / "loras").mkdir()
    kohya_lora(pipe, root / "loras" / "ink.safetensors", seed=4, rank=4, alpha=4.0,
               select="attn|proj|q_proj|fc")  # fmt: skip
    return {"ckpt": root / "tiny.safetensors", "lora": root / "loras" / "ink.safetensors"}


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def _one(out: Path) -> Path:
    (png,) = sorted(out.glob("*.png"))
    return png


def test_tags_parse_and_strip() -> None:
    prompt = "a <lora:a:0.5:0.2> cat <lora:b>, <lora:c:te=0.3:unet=0.7> <hypernet:h:1>"
    assert parse_lora_tags(prompt) == [LoraTag("a", 0.5, 0.2), LoraTag("b", 1.0, 1.0),
                                       LoraTag("c", 0.3, 0.7)]  # fmt: skip
    assert strip_extra_networks(prompt) == "a  cat ,  "
    with pytest.raises(ValueError, match="not a number"):
        parse_lora_tags("<lora:a:x>")


def test_a1111_hashes(files, tmp_path) -> None:
    """LoRA: sha256 of the bytes after the safetensors header (unchanged by new metadata);
    embeddings and non-safetensors files: sha256 of the file; 12 hex digits."""
    data = files["lora"].read_bytes()
    header = 8 + int.from_bytes(data[:8], "little")
    assert lora_hash(files["lora"]) == hashlib.sha256(data[header:]).hexdigest()[:12]
    tagged = tmp_path / "tagged.safetensors"
    save_file(load_file(str(files["lora"])), str(tagged), metadata={"ss_note": "x"})
    assert tagged.read_bytes() != data and lora_hash(tagged) == lora_hash(files["lora"])
    assert embedding_hash(files["lora"]) == hashlib.sha256(data).hexdigest()[:12]


def test_lora_flags_tags_metadata_and_from_png(files, tmp_path, capsys) -> None:
    ckpt = ["--ckpt", str(files["ckpt"])]
    base = [*ckpt, "--prompt", "a cat", *FAST]
    assert main(["txt2img", *base, "--outdir", str(tmp_path / "plain")]) == 0
    assert main(["txt2img", *base, "--lora", f"{files['lora']}:0.7",
                 "--outdir", str(tmp_path / "flag")]) == 0  # fmt: skip
    tag = [
        *ckpt,
        "--prompt",
        "a cat <lora:ink:0.7>",
        *FAST,
        "--lora-dir",
        str(files["lora"].parent),
    ]
    assert main(["txt2img", *tag, "--outdir", str(tmp_path / "tag")]) == 0
    flag, tagged = _one(tmp_path / "flag"), _one(tmp_path / "tag")
    assert np.array_equal(_pixels(flag), _pixels(tagged))
    assert not np.array_equal(_pixels(flag), _pixels(_one(tmp_path / "plain")))
    params = parameters_from_infotext(read_png_parameters(flag))
    assert params.prompt == "a cat <lora:ink:0.7>"  # the tag is kept, as A1111 records it
    assert params.extra["Lora hashes"] == f"ink: {lora_hash(files['lora'])}"
    assert 'Lora hashes: "ink: ' in read_png_parameters(flag)
    # --from-png finds the LoRA in --lora-dir and reproduces the image ...
    again = ["txt2img", *ckpt, "--from-png", str(flag), "--dtype", "fp32", "--device", "cpu",
             "--quiet", "--outdir", str(tmp_path / "again")]  # fmt: skip
    assert main([*again, "--lora-dir", str(files["lora"].parent)]) == 0
    assert np.array_equal(_pixels(_one(tmp_path / "again")), _pixels(flag))
    # ... or by the recorded hash after a rename (A1111's fallback) ...
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    (renamed / "ink_v2.safetensors").write_bytes(files["lora"].read_bytes())
    assert main([*again, "--lora-dir", str(renamed), "--outdir", str(tmp_path / "hash")]) == 0
    assert np.array_equal(_pixels(_one(tmp_path / "hash")), _pixels(flag))
    # ... and says which file it cannot find
    capsys.readouterr()
    assert main([*again, "--lora-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--from-png" in err and "'ink' not found" in err and str(tmp_path) in err
    assert main(["txt2img", *base, "--lora", str(tmp_path / "nope.safetensors"),
                 "--outdir", str(tmp_path / "x")]) == 2  # fmt: skip
    assert "nope.safetensors" in capsys.readouterr().err


def test_library_prompt_tags(files) -> None:
    """The tag is not encoded as text; a tag naming no loaded LoRA is an error."""
    pipe = build_pipeline()
    with pytest.raises(ValueError, match="not loaded: ink"):
        pipe.txt2img("a cat <lora:ink:1>", width=16, height=16, steps=1)
    pipe.load_lora(files["lora"])
    kw = dict(width=16, height=16, steps=1, seed=1)
    tagged = pipe.txt2img("a cat <lora:ink:1>", **kw)
    plain = pipe.txt2img("a cat", **kw)
    assert (tagged.latents == plain.latents).all()
    assert tagged.parameters[0].extra["Lora hashes"].startswith("ink: ")
    other = build_pipeline()
    apply_prompt_loras(other, "a cat <lora:ink:0.5:0.25>", [files["lora"].parent])
    (lora,) = other.loras
    assert (lora.name, lora.text_weight, lora.unet_weight) == ("ink", 0.5, 0.25)
    apply_prompt_loras(other, "<lora:ink:0.5:0.25>", [files["lora"].parent])  # loaded already
    assert len(other.loras) == 1
