"""``ServeConfig``: everything ``genmodels serve`` is started with, and loading its model."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from genmodels.models.tiling import TilingConfig
from genmodels.pipelines.limits import GenerationLimits
from genmodels.serve.catalog import CheckpointEntry
from genmodels.serve.worker import LoadedModel

__all__ = ["ServeConfig", "load_model", "parse_auth"]

MiB = 2**20


@dataclass(frozen=True)
class ServeConfig:
    ckpt: Path
    ckpt_dir: Path | None = None  # more checkpoints to switch to (sd_model_checkpoint)
    vae: Path | None = None
    device: str | None = None  # None: cuda if available
    dtype: str = "auto"
    outdir: Path = Path("outputs")  # where requests with save_images=true write
    limits: GenerationLimits = field(default_factory=GenerationLimits)
    max_body_bytes: int = 64 * MiB  # a 4096x4096 PNG in base64 fits
    max_queue: int = 64  # waiting requests beyond this get 429
    auth: tuple[tuple[str, str], ...] = ()  # HTTP basic credentials; empty: no auth
    cors_origins: tuple[str, ...] = ()  # origins whose pages may call the API (A1111's flag)
    vae_tiling_above: int = 2048  # VAE in tiles above this many pixels per side (0: never)
    lora_dirs: tuple[Path, ...] = ()  # where <lora:NAME:W> tags are looked up
    embeddings_dirs: tuple[Path, ...] = ()  # textual-inversion embeddings, used by file name

    def __post_init__(self) -> None:
        if self.max_body_bytes < 1024:
            raise ValueError(f"max_body_bytes must be >= 1024, got {self.max_body_bytes}")
        if self.max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {self.max_queue}")
        if self.vae_tiling_above < 0:
            raise ValueError(f"vae_tiling_above must be >= 0, got {self.vae_tiling_above}")


def parse_auth(text: str | None) -> tuple[tuple[str, str], ...]:
    """A1111's ``--api-auth``: ``user:password``, several separated by commas."""
    if not text:
        return ()
    pairs = []
    for item in text.split(","):
        user, sep, password = item.strip().partition(":")
        if not sep or not user or not password:
            raise ValueError(f"--api-auth expects user:password[,user2:password2], got {item!r}")
        pairs.append((user, password))
    return tuple(pairs)


def load_model(config: ServeConfig, entry: CheckpointEntry) -> LoadedModel:
    """Load the checkpoint of ``entry`` with the server's device, dtype, VAE and tiling."""
    from genmodels.pipelines.loading import load_pipeline

    pipe = load_pipeline(entry.path, dtype=config.dtype, device=config.device, vae=config.vae)
    if config.vae_tiling_above:
        pipe.vae.tiling = TilingConfig(min_size=config.vae_tiling_above)
    return LoadedModel(pipe, entry)
