"""Time to apply and remove a LoRA on an SD 1.5-size UNet + CLIP ViT-L (random weights).

The LoRA is a kohya file of rank ``--rank`` on every attention, feed-forward and proj_in/out
layer of the UNet and every linear layer of the text encoder (the usual SD 1.5 LoRA: 192 + 72
modules); ``--locon`` adds the ResBlock / sampler convs (LyCORIS LoCon). Prints the time of
``pipe.load_lora`` (file read + deltas + merge), ``unload_loras`` and a second apply with the
file in the page cache, and checks that the unload is bit-exact.

    PYTHONPATH=src python benchmarks/lora_apply.py [--dtype fp16] [--rank 32] [--locon]
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from genmodels.adapters.kohya_names import kohya_names
from genmodels.configs.text import encoder_preset
from genmodels.configs.unet import get_unet_config
from genmodels.models.text.encoders import TextEncoder
from genmodels.models.unet import UNetModel
from genmodels.pipelines.latent_diffusion import LatentDiffusionPipeline

_ATTN = r"attn|ff\.net|proj_in|proj_out|self_attn|mlp"
_CONV = r"in_layers\.2|out_layers\.3|skip_connection|\.op$|\.conv$"


def _model(dtype: torch.dtype) -> tuple[UNetModel, TextEncoder]:
    with torch.device("meta"):
        unet, text = UNetModel(get_unet_config("sd1")), TextEncoder(encoder_preset("sd1"))
    unet, text = unet.to_empty(device="cpu"), text.to_empty(device="cpu")
    gen = torch.Generator().manual_seed(0)
    for p in [*unet.parameters(), *text.parameters()]:
        p.data = torch.empty(p.shape, dtype=dtype).uniform_(-0.02, 0.02, generator=gen)
    return unet, text


def _lora(pipe, path: Path, rank: int, select: str, dtype: torch.dtype) -> int:
    texts = [e.model for e in pipe.text_encoder.embedders]
    gen = torch.Generator().manual_seed(1)
    sd = {}
    for target, name in kohya_names(pipe.unet, texts, "sd1").items():
        if not re.search(select, target.path):
            continue
        root = pipe.unet if target.component == "unet" else texts[target.index]
        w = root.get_submodule(target.path).weight
        sd[f"{name}.lora_down.weight"] = (torch.randn(rank, *w.shape[1:], generator=gen)
                                          * 0.01).to(dtype)  # fmt: skip
        up = torch.randn(w.shape[0], rank, *([1, 1] if w.ndim == 4 else []), generator=gen)
        sd[f"{name}.lora_up.weight"] = (up * 0.01).to(dtype)
        sd[f"{name}.alpha"] = torch.tensor(float(rank) / 2)
    save_file(sd, str(path))
    return len(sd) // 3


def _adapted(pipe, select: str) -> list[torch.nn.Module]:
    texts = [e.model for e in pipe.text_encoder.embedders]
    targets = kohya_names(pipe.unet, texts, "sd1")
    roots = {"unet": [pipe.unet], "text": texts}
    return [roots[t.component][t.index].get_submodule(t.path) for t in targets
            if re.search(select, t.path)]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dtype", default="fp16", choices=("fp16", "bf16", "fp32"))
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--locon", action="store_true", help="also adapt the convs")
    args = parser.parse_args()
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    unet, text = _model(dtype)
    pipe = LatentDiffusionPipeline(
        unet,
        None,
        text,
        None,
        "sd1",
        "eps",
        dtype,  # type: ignore
        torch.device("cpu"),
        None,
    )  # type: ignore[arg-type]
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    select = f"{_ATTN}|{_CONV}" if args.locon else _ATTN
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "lora.safetensors"
        modules = _lora(pipe, path, args.rank, select, dtype)
        size = path.stat().st_size / 2**20
        print(f"SD 1.5 UNet + CLIP-L, {args.dtype}, {torch.get_num_threads()} threads; LoRA "
              f"rank {args.rank} on {modules} modules ({size:.0f} MiB)")  # fmt: skip
        for run in ("apply", "unload", "apply again", "unload again"):
            start = time.perf_counter()
            if run.startswith("apply"):
                pipe.load_lora(path, 0.8)
            else:
                pipe.unload_loras()
            print(f"  {run:<13} {time.perf_counter() - start:6.3f} s")
    # the floor: one copy of every adapted weight (a merge reads and writes each at least once)
    weights = [m.weight for m in _adapted(pipe, select)]
    start = time.perf_counter()
    copies = [w.clone() for w in weights]
    print(
        f"  (one clone of the {sum(w.numel() for w in copies) / 1e6:.0f} M adapted weights: "
        f"{time.perf_counter() - start:.3f} s)"
    )
    exact = all(torch.equal(v, before[k]) for k, v in unet.state_dict().items())
    print(f"  unload bit-exact: {exact}")


if __name__ == "__main__":
    main()
