"""``genmodels serve``: AUTOMATIC1111's HTTP API and a web page for one checkpoint.

    genmodels serve --ckpt model.safetensors                     # http://127.0.0.1:7860/
    genmodels serve --ckpt a.safetensors --ckpt-dir models/ --host 0.0.0.0 --api-auth me:secret

Needs the ``serve`` extra (``pip install 'genmodels[serve]'``). Listens on loopback unless
``--host`` says otherwise. Everything that can be checked is checked, and the model loaded,
before the port is opened.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from genmodels.cli.adapter_args import add_adapter_folder_arguments
from genmodels.pipelines.limits import NO_LIMITS, GenerationLimits
from genmodels.pipelines.outputs import check_outdir

__all__ = ["register", "run"]


def register(sub: argparse._SubParsersAction) -> None:
    help_ = "serve AUTOMATIC1111's HTTP API and a web page for a checkpoint"
    p = sub.add_parser("serve", help=help_, description=help_ + ".")
    p.add_argument("--ckpt", type=Path, required=True, help="checkpoint file or diffusers folder")
    p.add_argument(
        "--ckpt-dir",
        type=Path,
        help="folder of more checkpoints to switch to (sd_model_checkpoint)",
    )
    p.add_argument("--vae", type=Path, help="separate VAE file or folder")
    add_adapter_folder_arguments(p)
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only)",
    )
    p.add_argument("--port", type=int, default=7860, help="port (default 7860, as A1111)")
    p.add_argument(
        "--api-auth",
        metavar="USER:PASSWORD",
        help="require HTTP basic auth (several: a:b,c:d), as A1111's --api-auth",
    )
    p.add_argument(
        "--cors-allow-origins",
        metavar="URL[,URL]",
        help="origins whose web pages may call the API (as A1111's flag)",
    )
    p.add_argument(
        "--outdir",
        type=Path,
        default=Path("outputs"),
        help="folder for images of requests with save_images=true",
    )
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--dtype", default="auto", help="auto | fp32 | bf16 | fp16 (default auto)")
    p.add_argument(
        "--max-pixels",
        type=int,
        default=GenerationLimits().max_pixels,
        help="largest width x height of an image or input image (default 4096^2)",
    )
    p.add_argument(
        "--no-limits", action="store_true", help="no limits on steps, pixels or estimated memory"
    )
    p.add_argument(
        "--max-body-mb", type=float, default=64.0, help="largest request body in MiB (default 64)"
    )
    p.add_argument(
        "--max-queue",
        type=int,
        default=64,
        help="requests that may wait; more get HTTP 429 (default 64)",
    )
    p.add_argument(
        "--log-level",
        default="warning",
        choices=["critical", "error", "warning", "info", "debug"],
        help="uvicorn's log level (default warning; info logs each request)",
    )
    p.set_defaults(func=run)


def _config(args: argparse.Namespace):
    from genmodels.serve.config import ServeConfig, parse_auth

    if not args.ckpt.exists():
        raise ValueError(f"checkpoint not found: {args.ckpt}")
    if args.ckpt_dir is not None and not args.ckpt_dir.is_dir():
        raise ValueError(f"--ckpt-dir {args.ckpt_dir} is not a folder")
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be in [0, 65535], got {args.port}")
    if args.max_pixels is not None and args.max_pixels < 1:
        raise ValueError(f"--max-pixels must be >= 1, got {args.max_pixels}")
    if not args.max_body_mb > 0:
        raise ValueError(f"--max-body-mb must be > 0, got {args.max_body_mb}")
    check_outdir(args.outdir)
    for flag, folders in (("--lora-dir", args.lora_dir), ("--embeddings-dir", args.embeddings_dir)):
        for folder in folders:
            if not folder.is_dir():
                raise ValueError(f"{flag} {folder} is not a folder")
    limits = NO_LIMITS if args.no_limits else GenerationLimits(max_pixels=args.max_pixels)
    return ServeConfig(
        ckpt=args.ckpt, ckpt_dir=args.ckpt_dir, vae=args.vae, device=args.device,
        dtype=args.dtype, outdir=args.outdir, limits=limits,
        max_body_bytes=max(1024, int(args.max_body_mb * 2**20)), max_queue=args.max_queue,
        auth=parse_auth(args.api_auth), lora_dirs=tuple(args.lora_dir),
        embeddings_dirs=tuple(args.embeddings_dir),
        cors_origins=tuple(o.strip() for o in (args.cors_allow_origins or "").split(",")
                           if o.strip()),
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    try:
        from genmodels.serve.app import create_app
        from genmodels.serve.server import serve_forever
    except ImportError as exc:
        raise ValueError(
            f"genmodels serve needs the serve extra ({exc.name} is missing): "
            "pip install 'genmodels[serve]'"
        ) from None
    app = create_app(_config(args))
    app.server.load()  # a bad checkpoint fails here, with one line, before the port opens
    try:
        serve_forever(app, args.host, args.port, args.log_level)
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it handled
        pass
    return 0
