"""``genmodels info PATH``: what a checkpoint (or a generated PNG) contains.

For a checkpoint (file or diffusers folder): architecture, parameterisation and how it was
decided, tensor dtypes, parameter counts, and the unused / missing keys, all without loading
any weights into models (meta-device modules). For a PNG: its text chunks (where A1111 and
genmodels store the generation parameters); ``png_parameters`` is the hook a later parser of
those parameters plugs into.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from genmodels.pipelines.latent_diffusion import LoadInfo

_SHOWN = 10


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "info",
        help="describe a checkpoint (architecture, prediction, dtypes, parameters, keys)",
        description="Describe a Stable Diffusion checkpoint (.safetensors, .ckpt or diffusers "
        "folder) or the generation parameters stored in a PNG.",
    )
    parser.add_argument("path", type=Path, help="checkpoint file, diffusers folder or PNG")
    parser.add_argument("--vae", type=Path, default=None, help="a separate VAE file or folder")
    parser.add_argument(
        "--prediction", choices=("eps", "v"), default=None, help="override eps/v detection"
    )
    parser.add_argument("--keys", action="store_true", help="list every unused / missing key")
    parser.set_defaults(func=run)


def png_parameters(path: Path) -> dict[str, str]:
    """The text chunks of a PNG (A1111 and genmodels write ``parameters``)."""
    from PIL import Image

    with Image.open(path) as image:
        return {str(k): str(v) for k, v in getattr(image, "text", {}).items()}


def _keys(label: str, keys: list[str], show_all: bool) -> list[str]:
    if not keys:
        return [f"{label}: none"]
    shown = keys if show_all else keys[:_SHOWN]
    lines = [f"{label} ({len(keys)}):"] + [f"  {k}" for k in shown]
    if len(shown) < len(keys):
        lines.append(f"  ... {len(keys) - len(shown)} more (--keys lists all)")
    return lines


def format_info(spec: object, info: LoadInfo, show_all: bool = False) -> str:
    """Human-readable summary of ``inspect_checkpoint``'s result."""
    preset = f" (UNet preset {info.unet_preset})" if info.unet_preset else ""
    total = sum(info.parameters.values())
    lines = [
        f"path: {info.source}",
        f"format: {info.source_format}",
        f"architecture: {info.description}{preset}",
        f"prediction: {spec.prediction} ({info.prediction_source})",
        f"zero terminal SNR: {'yes' if spec.zero_terminal_snr else 'no'}",
        f"EMA weights: {'yes (load with use_ema=True)' if info.has_ema else 'no'}",
        "dtypes: " + ", ".join(f"{k} x{n}" for k, n in sorted(info.source_dtypes.items())),
        "parameters: " + ", ".join(f"{k} {n:,}" for k, n in info.parameters.items())
        + f"; total {total:,}",
    ]  # fmt: skip
    if spec.vae is not None or info.vae_source:
        lines.append(f"latent scale factor: {spec.vae.scale_factor if spec.vae else '-'}")
    else:
        lines.append("vae: none in this checkpoint (give one with --vae)")
    lines += _keys("unused keys", info.unused_keys, show_all)
    lines += _keys("missing keys", info.missing_keys, show_all)
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    path: Path = args.path
    if path.suffix.lower() == ".png":
        chunks = png_parameters(path)
        if not chunks:
            print(f"{path}: no generation parameters stored")
        if "parameters" in chunks:  # A1111/genmodels generation parameters, one per line
            from genmodels.pipelines.metadata import format_png_parameters

            print(format_png_parameters(path))
        for key, value in chunks.items():
            if key != "parameters":
                print(f"{key}: {value}")
        return 0
    from genmodels.pipelines.loading import inspect_checkpoint

    spec, info = inspect_checkpoint(path, vae=args.vae, prediction=args.prediction)
    print(format_info(spec, info, args.keys))
    return 0
