"""``genmodels merge A B [C] --mode weighted-sum|add-difference --alpha X --out OUT``.

A1111's checkpoint merger: ``weighted-sum`` gives ``(1 - alpha) * A + alpha * B``,
``add-difference`` gives ``A + alpha * (B - C)`` (e.g. an inpainting version of a fine-tune B:
A = the inpainting model, C = B's base; the extra input channels of A are kept). The models
must be of one family; the recipe is stored in the output's metadata. Safetensors inputs are
streamed tensor by tensor (see ``checkpoints.merge``); an existing OUT is replaced only with
``--overwrite``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from genmodels.checkpoints.merge import MERGE_MODES


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "merge",
        help="merge checkpoints (weighted sum or add difference, as A1111)",
        description="Merge two or three checkpoints of one family into a single safetensors "
        "file: weighted-sum (1 - alpha) * A + alpha * B, add-difference A + alpha * (B - C).",
    )
    parser.add_argument("models", type=Path, nargs="+", metavar="MODEL",
                        help="A B (weighted-sum) or A B C (add-difference)")  # fmt: skip
    parser.add_argument("--mode", choices=MERGE_MODES, default="weighted-sum",
                        help="merge formula (default weighted-sum)")  # fmt: skip
    parser.add_argument("--alpha", type=float, required=True, help="the multiplier")
    parser.add_argument("--out", type=Path, required=True, help="output .safetensors file")
    parser.add_argument("--half", action="store_true", help="store float16 weights")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from genmodels.checkpoints.merge import MergeRecipe, merge_checkpoints

    recipe = MergeRecipe(args.mode, args.alpha, args.half)
    out = merge_checkpoints(args.models, args.out, recipe, overwrite=args.overwrite)
    print(f"{' + '.join(str(m) for m in args.models)} -> {out} ({args.mode}, alpha {args.alpha})")
    return 0
