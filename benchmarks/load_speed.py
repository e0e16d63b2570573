"""Load speed and memory of ``load_pipeline`` on an SD 1.5-size single-file checkpoint.

Writes a random-weight SD 1.x ``.safetensors`` (1.07 B parameters, the full key set of the
released file; fp16 ~2.1 GB and fp32 ~4.3 GB) to a temporary folder, then, each in a fresh
process so peak RSS is clean:

* ``read``: read the file's bytes into memory (the floor for any loader);
* ``load``: ``genmodels.load_pipeline(path, dtype=torch.bfloat16)`` (fp16 -> bf16 conversion).

Prints wall time, peak RSS (VmHWM) and, at the end, anonymous vs file-backed resident memory
(file-backed pages are the shared, memory-mapped file; anonymous ones are the model). The files
are deleted afterwards. Usage: ``python benchmarks/load_speed.py [--dir /tmp] [--keep]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from genmodels.checkpoints.components import Components, join_checkpoint
from genmodels.checkpoints.io import save_state_dict
from genmodels.configs.autoencoder import get_autoencoder_config
from genmodels.configs.text import ENCODER_PRESETS
from genmodels.configs.unet import get_unet_config
from genmodels.models.autoencoder_kl import AutoencoderKL
from genmodels.models.text.encoders import TextEncoder
from genmodels.models.unet import UNetModel


def make_checkpoint(path: Path, dtype: torch.dtype) -> int:
    """Random SD 1.x checkpoint of ``dtype`` at ``path``; returns its parameter count."""
    with torch.device("meta"):
        unet = UNetModel(get_unet_config("sd1"))
        vae = AutoencoderKL(get_autoencoder_config("sd"))
        text = TextEncoder(ENCODER_PRESETS["sd1"])
    shapes = join_checkpoint(
        Components(unet.state_dict(), vae.state_dict(), [text.embedders[0].model.state_dict()]),
        "sd1",
    )
    gen = torch.Generator().manual_seed(0)
    sd = {k: (torch.randn(v.shape, generator=gen) * 0.02).to(dtype) for k, v in shapes.items()}
    save_state_dict(sd, path)
    return sum(v.numel() for v in sd.values())


def _memory() -> dict[str, float]:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "RssAnon", "RssFile"):
            fields[key] = int(value.split()[0]) / 2**20  # kB -> GiB
    return fields


def child(mode: str, path: str) -> None:
    torch.set_num_threads(torch.get_num_threads())
    start = time.perf_counter()
    if mode == "read":
        size = Path(path).stat().st_size
        buf = bytearray(size)
        with open(path, "rb", buffering=0) as f:
            view, done = memoryview(buf), 0
            while done < size:
                done += f.readinto(view[done : done + (64 << 20)])
    else:
        from genmodels.pipelines.loading import load_pipeline

        pipe = load_pipeline(path, dtype=torch.bfloat16)
        assert next(pipe.unet.parameters()).dtype == torch.bfloat16
    seconds = time.perf_counter() - start
    print(json.dumps({"mode": mode, "seconds": seconds, **_memory()}))


def run(mode: str, path: Path) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", mode, str(path)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=tempfile.gettempdir())
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    parser.add_argument(
        "--source-dtype", nargs="+", choices=("fp16", "fp32"), default=["fp16", "fp32"]
    )
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    for name in args.source_dtype:
        bench(Path(args.dir) / f"genmodels_sd15_random_{name}.safetensors", name, args.keep)


def bench(path: Path, name: str, keep: bool) -> None:
    try:
        t0 = time.perf_counter()
        n = make_checkpoint(path, {"fp16": torch.float16, "fp32": torch.float32}[name])
        size = path.stat().st_size / 2**30
        print(f"wrote {path} ({n / 1e9:.3f} B params, {size:.2f} GiB) in "
              f"{time.perf_counter() - t0:.1f} s")  # fmt: skip
        run("read", path)  # warm the page cache so both measurements read from memory
        results = {mode: run(mode, path) for mode in ("read", "load")}
        for mode, r in results.items():
            end = f"end: anon {r['RssAnon']:.2f} GiB, file-backed {r['RssFile']:.2f} GiB"
            print(f"{mode:>5}: {r['seconds']:.2f} s, peak RSS {r['VmHWM']:.2f} GiB ({end})")
        ratio = results["load"]["seconds"] / results["read"]["seconds"]
        print(f"{name} file -> bf16 pipeline: load / read time {ratio:.2f}x (target <= 1.5x)")
    finally:
        if not keep:
            path.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
