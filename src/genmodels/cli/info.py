"""``genmodels info PATH``: what a checkpoint (or a generated PNG) contains.

For a checkpoint (file or diffusers folder): architecture, parameterisation and how it was
decided, tensor dtypes, parameter counts, and the unused / missing / wrong-shape keys, all
without loading any weights into models (meta-device modules): the same matching that
``load_pipeline`` (``txt2img``) does, so a file it refuses is reported as such. For a genmodels
training run folder: its task, checkpoints and newest step. For a PNG: its text chunks (where
A1111 and genmodels store the generation parameters): A1111 infotext is parsed, the JSON
settings of ``genmodels sample`` / ``vq-sample`` are shown as settings.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from genmodels.checkpoints.detect import ModelSpec
from genmodels.checkpoints.io import check_regular_file
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
    """The text chunks of a PNG (A1111 and genmodels write ``parameters``); a missing,
    unreadable or truncated file is a ValueError naming it."""
    from PIL import Image

    check_regular_file(path, "PNG image")
    try:
        with Image.open(path) as image:
            return {str(k): str(v) for k, v in getattr(image, "text", {}).items()}
    except (OSError, SyntaxError, ValueError) as exc:  # PIL: truncated / not a PNG
        raise ValueError(f"{path}: not a readable PNG (truncated or corrupt?): {exc}") from None


def json_settings(text: str) -> dict | None:
    """The settings of a ``parameters`` chunk holding a JSON object (what ``genmodels sample``
    and ``vq-sample`` write), else None (A1111 infotext)."""
    if not text.lstrip().startswith("{"):
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def format_png(path: Path, chunks: dict[str, str]) -> str:
    """The generation parameters of a PNG: JSON settings, or parsed A1111 infotext."""
    lines = [] if chunks else [f"{path}: no generation parameters stored"]
    text = chunks.get("parameters")
    settings = None if text is None else json_settings(text)
    if settings is not None:
        lines.append("settings (JSON, written by genmodels sample / vq-sample):")
        width = max((len(k) for k in settings), default=0)
        lines += [f"  {k:<{width}}  {json.dumps(v)}" for k, v in settings.items()]
    elif text is not None:  # A1111/genmodels infotext, one parameter per line
        from genmodels.pipelines.metadata import format_png_parameters

        lines.append(format_png_parameters(path))
    lines += [f"{k}: {v}" for k, v in chunks.items() if k != "parameters"]
    return "\n".join(lines)


def _keys(label: str, keys: list[str], show_all: bool) -> list[str]:
    if not keys:
        return [f"{label}: none"]
    shown = keys if show_all else keys[:_SHOWN]
    lines = [f"{label} ({len(keys)}):"] + [f"  {k}" for k in shown]
    if len(shown) < len(keys):
        lines.append(f"  ... {len(keys) - len(shown)} more (--keys lists all)")
    return lines


def format_info(spec: ModelSpec, info: LoadInfo, show_all: bool = False) -> str:
    """Human-readable summary of ``inspect_checkpoint``'s result, the keys whose shape does not
    fit the architecture (``info.wrong_shapes``, as ``load_pipeline`` refuses them) included."""
    shapes = info.wrong_shapes
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
    lines += _keys("wrong shapes", shapes, show_all)
    if info.missing_keys or shapes:
        lines.append(
            f"loads strictly: no ({len(info.missing_keys)} missing, {len(shapes)} wrong shapes; "
            "txt2img refuses it, strict=False loads what fits)"
        )
    else:
        lines.append("loads strictly: yes")
    return "\n".join(lines)


def format_controlnet(path: Path) -> str:
    """A ControlNet file or folder: family, architecture, hint encoder, dtypes, parameters."""
    from collections import Counter

    from genmodels.checkpoints.controlnet import read_controlnet
    from genmodels.checkpoints.detect import FAMILY_NAMES

    cn = read_controlnet(path)
    c = cn.config
    family = FAMILY_NAMES[cn.family] if cn.family else "unrecognised (non-standard widths)"
    dtypes = Counter(str(t.dtype).removeprefix("torch.") for t in cn.state_dict.values())
    total = sum(t.numel() for t in cn.state_dict.values())
    widths = [c.unet.model_channels * m for m in c.unet.channel_mult]
    return "\n".join([
        f"path: {path}",
        f"format: ControlNet ({cn.layout} keys)",
        f"family: {family}",
        f"encoder: widths {widths}, context width {c.unet.context_dim}"
        + (f", SDXL label input {c.unet.adm_in_channels}" if c.unet.adm_in_channels else ""),
        f"control image: {c.hint_channels} channels, {c.hint_factor}x the latent size",
        "dtypes: " + ", ".join(f"{k} x{n}" for k, n in sorted(dtypes.items())),
        f"parameters: {total:,}",
    ])  # fmt: skip


def format_run(path: Path) -> str:
    """A training run folder: task, checkpoints, newest step, artefacts."""
    from genmodels.checkpoints.run_info import describe_run

    run = describe_run(path)
    newest = run.newest
    lines = [
        f"path: {run.path}",
        "format: genmodels training run",
        f"task: {run.task}",
        f"checkpoints: {sum(c.complete for c in run.checkpoints)}",
    ]
    if newest is None:
        lines.append("newest checkpoint: none")
    else:
        params = "" if run.parameters is None else f", {run.parameters:,} parameters"
        lines.append(f"newest checkpoint: step {newest.step} ({newest.folder}{params})")
    incomplete = [c for c in run.checkpoints if not c.complete]
    if incomplete:
        lines.append("incomplete checkpoints (no model.safetensors): "
                     + ", ".join(c.folder.name for c in incomplete))  # fmt: skip
    if run.artefacts:
        lines.append("files: " + ", ".join(run.artefacts))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    path: Path = args.path
    if path.suffix.lower() == ".png":
        print(format_png(path, png_parameters(path)))
        return 0
    from genmodels.checkpoints.diffusers_folder import is_diffusers_folder
    from genmodels.checkpoints.run_info import is_run_folder

    if path.is_dir() and not is_diffusers_folder(path) and is_run_folder(path):
        print(format_run(path))
        return 0
    from genmodels.checkpoints.controlnet import is_controlnet

    if is_controlnet(path):
        print(format_controlnet(path))
        return 0
    from genmodels.pipelines.loading import inspect_checkpoint

    spec, info = inspect_checkpoint(path, args.vae, args.prediction)
    print(format_info(spec, info, args.keys))
    return 0
