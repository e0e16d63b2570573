"""The latent diffusion pipeline container (Rombach et al. 2022): the loaded parts of one SD model.

It only holds components; what is done with them (txt2img, img2img, inpainting) lives in
separate modules that take a ``LatentDiffusionPipeline``. ``genmodels.load_pipeline`` builds one
from any checkpoint.

* ``unet``: the raw network ``unet(x, t, context=..., y=...)``.
* ``denoiser``: the same network as a denoiser ``denoiser(x, sigma, context=..., y=...) -> x0``
  (``DiscreteDenoiser`` with the model's prediction type and DDPM schedule); samplers use this.
* ``vae``: ``encode_latents`` / ``decode_latents`` apply ``scale_factor`` (and ``shift_factor``).
* ``text_encoder``: prompts -> ``TextConditioning(context, pooled)``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from genmodels.adapters.embeddings import EmbeddingStore, LoadedEmbedding
from genmodels.adapters.lora import AppliedLora, LoraStack
from genmodels.diffusion.denoisers import DiscreteDenoiser
from genmodels.models.autoencoder_kl import AutoencoderKL
from genmodels.models.family import ModelFamily
from genmodels.models.text.encoders import TextEncoder
from genmodels.models.unet import UNetModel

if TYPE_CHECKING:
    from genmodels.pipelines.generate import GenerationResult


@dataclass
class LoadInfo:
    """What ``load_pipeline`` found and did (printed by ``genmodels info``)."""

    source: str
    source_format: str  # "ldm" | "genmodels" | "diffusers"
    description: str  # e.g. "Stable Diffusion 2.x inpainting"
    unet_preset: str | None
    prediction_source: str
    source_dtypes: dict[str, int] = field(default_factory=dict)  # dtype name -> tensor count
    parameters: dict[str, int] = field(default_factory=dict)  # component -> parameter count
    unused_keys: list[str] = field(default_factory=list)
    missing_keys: list[str] = field(default_factory=list)
    wrong_shapes: list[str] = field(default_factory=list)  # keys load_pipeline refuses
    has_ema: bool = False
    used_ema: bool = False
    vae_source: str | None = None  # a separate VAE file given with vae=


@dataclass
class LatentDiffusionPipeline:
    """UNet + VAE + text encoder(s) + denoiser of one latent diffusion model."""

    unet: UNetModel
    vae: AutoencoderKL
    text_encoder: TextEncoder
    denoiser: DiscreteDenoiser
    model_type: ModelFamily
    prediction: str  # "eps" | "v"
    dtype: torch.dtype
    device: torch.device
    info: LoadInfo
    zero_terminal_snr: bool = False
    lora_stack: LoraStack = field(default_factory=LoraStack, repr=False, compare=False)
    embedding_store: EmbeddingStore = field(
        default_factory=EmbeddingStore, repr=False, compare=False
    )

    @property
    def scale_factor(self) -> float:
        """Latent scaling of the VAE (0.18215 for SD 1.x/2.x, 0.13025 for SDXL)."""
        return self.vae.config.scale_factor

    @property
    def inpainting(self) -> bool:
        """A 9-channel UNet: noisy latent + masked-image latent + mask."""
        return self.unet.config.in_channels == 9

    @property
    def is_sdxl(self) -> bool:
        return self.model_type.startswith("sdxl")

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | str | None = None
    ) -> LatentDiffusionPipeline:
        """Move every component (in place) and return self. The denoiser's sigma table stays
        fp32 whatever ``dtype`` is."""
        from genmodels.pipelines.devices import resolve_device, resolve_dtype

        device = resolve_device(device) if device is not None else self.device
        dtype = resolve_dtype(dtype, device) if dtype is not None else self.dtype
        for module in (self.unet, self.vae, self.text_encoder):
            module.to(device=device, dtype=dtype)
        self.denoiser.to(device=device)
        self.device, self.dtype = device, dtype
        return self

    def eval(self) -> LatentDiffusionPipeline:
        for module in (self.unet, self.vae, self.text_encoder, self.denoiser):
            module.eval()
        return self

    def load_lora(
        self,
        path: str | os.PathLike,
        weight: float = 1.0,
        *,
        unet_weight: float | None = None,
        text_weight: float | None = None,
        strict: bool = False,
    ) -> AppliedLora:
        """Merge a LoRA / LyCORIS file (kohya, A1111, diffusers / PEFT) into the UNet and text
        encoder(s); ``unet_weight`` / ``text_weight`` override ``weight`` for one side. LoRAs
        stack; ``unload_loras`` restores the original weights. See ``genmodels.adapters.lora``."""
        texts = [e.model for e in self.text_encoder.embedders]
        return self.lora_stack.apply(
            path, self.unet, texts, self.model_type,
            weight if unet_weight is None else unet_weight,
            weight if text_weight is None else text_weight, strict,
        )  # fmt: skip

    def unload_loras(self) -> None:
        """Remove every applied LoRA: the original weights come back bit for bit."""
        self.lora_stack.unload()

    @property
    def loras(self) -> list[AppliedLora]:
        """The applied LoRAs, in order."""
        return list(self.lora_stack.applied)

    def load_embeddings(self, paths: os.PathLike | str | list) -> list[LoadedEmbedding]:
        """Add textual-inversion embeddings (A1111 ``.pt`` / ``.safetensors``, diffusers
        ``learned_embeds``); each is then used by its file name in prompts. See
        ``genmodels.adapters.embeddings``."""
        paths = [paths] if isinstance(paths, str | os.PathLike) else list(paths)
        return self.embedding_store.load(paths, self.text_encoder, self.model_type)

    def unload_embeddings(self) -> None:
        """Remove every embedding (the original token tables come back)."""
        self.embedding_store.unload(self.text_encoder)

    # Generation lives in genmodels.pipelines.generate (functions over this container); these
    # are the methods users of diffusers/A1111 reach for.
    def txt2img(self, prompt: str, **kwargs: Any) -> GenerationResult:
        """See :func:`genmodels.pipelines.generate.txt2img`."""
        from genmodels.pipelines.generate import txt2img

        return txt2img(self, prompt, **kwargs)

    def img2img(self, image: Any, prompt: str, **kwargs: Any) -> GenerationResult:
        """See :func:`genmodels.pipelines.generate.img2img`."""
        from genmodels.pipelines.generate import img2img

        return img2img(self, image, prompt, **kwargs)

    def inpaint(self, image: Any, mask: Any, prompt: str, **kwargs: Any) -> GenerationResult:
        """See :func:`genmodels.pipelines.generate.inpaint`."""
        from genmodels.pipelines.generate import inpaint

        return inpaint(self, image, mask, prompt, **kwargs)
