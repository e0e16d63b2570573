"""Peak memory of ``genmodels merge`` against the size of the models merged.

Writes two (or three) random checkpoints with the ``--unet`` preset, then runs the merge in a
fresh process and prints its peak resident memory above the same process's memory after the
imports, next to the size of one input file. Streaming keeps the increase to a few tensors
(plus file pages the kernel may count while they are mapped), not three models.

    PYTHONPATH=src python benchmarks/merge_memory.py [--unet small] [--mode add-difference]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from genmodels.pipelines.build import build_pipeline, save_pipeline

_CHILD = """
import resource, sys
from genmodels.checkpoints.merge import MergeRecipe, merge_checkpoints
import torch, safetensors  # imports counted in the baseline
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
*paths, out, mode = sys.argv[1:]
merge_checkpoints(paths, out, MergeRecipe(mode, 0.5))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(base, peak)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--unet", default="small", help="UNet preset of the random models")
    parser.add_argument("--mode", default="weighted-sum",
                        choices=("weighted-sum", "add-difference"))  # fmt: skip
    args = parser.parse_args()
    n = 3 if args.mode == "add-difference" else 2
    with tempfile.TemporaryDirectory() as tmp:
        paths = [Path(tmp) / f"m{i}.safetensors" for i in range(n)]
        for i, path in enumerate(paths):
            save_pipeline(build_pipeline(unet_preset=args.unet, seed=i), path)
        out = Path(tmp) / "merged.safetensors"
        cmd = [sys.executable, "-c", _CHILD, *map(str, paths), str(out), args.mode]
        base, peak = map(int, subprocess.run(cmd, check=True, capture_output=True,
                                             text=True).stdout.split())  # fmt: skip
        size = paths[0].stat().st_size / 2**20
        print(f"{args.mode} of {n} '{args.unet}' checkpoints of {size:.0f} MiB each: peak RSS "
              f"{peak / 1024:.0f} MiB, {(peak - base) / 1024:.0f} MiB above the imports "
              f"({(peak - base) / 1024 / size:.2f} x one model)")  # fmt: skip


if __name__ == "__main__":
    main()
