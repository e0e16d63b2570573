"""LoRA adapters for training (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language
Models"; LoCon on convolutions as kohya sd-scripts / LyCORIS).

A frozen layer W gets a trainable low-rank path, y = W x + (alpha / rank) up(down(dropout(x))),
``down`` Kaiming-uniform and ``up`` zero-initialised, so training starts from the base model
exactly (kohya ``LoRAModule``, peft ``LoraLayer``). For a Conv2d, ``down`` is a conv with the
layer's kernel / stride / padding and ``up`` a 1x1 conv.

The adapters live in their own module (``LoRANetwork``, a ``ModuleDict`` keyed by the kohya
name of each layer, from ``adapters.kohya_names``, the table generation-side LoRA loading reads)
and are attached with forward hooks, so the base model's parameter names, its state dict and
its checkpoints are untouched; ``enabled = False`` turns them off (samples without the
adapter), ``merged_weights`` gives W + delta for export and parity checks.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from genmodels.adapters.kohya_names import Target, kohya_lookup, kohya_names
from genmodels.models.family import ModelFamily
from genmodels.models.text.encoders import TextEncoder
from genmodels.nn.resnet import ResBlock
from genmodels.nn.transformer import SpatialTransformer
from genmodels.nn.updown import Downsample, Upsample

from .finetune_config import LoRAConfig

__all__ = [
    "LoRAAdapter",
    "LoRANetwork",
    "build_lora_network",
    "load_kohya_weights",
    "lora_delta",
    "unet_lora_layers",
]


class LoRAAdapter(nn.Module):
    """The low-rank path of one Linear / Conv2d: ``lora_down``, ``lora_up`` and ``alpha``."""

    def __init__(self, base: nn.Module, rank: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__()
        if isinstance(base, nn.Linear):
            self.lora_down: nn.Module = nn.Linear(base.in_features, rank, bias=False)
            self.lora_up: nn.Module = nn.Linear(rank, base.out_features, bias=False)
        elif isinstance(base, nn.Conv2d):
            self.lora_down = nn.Conv2d(base.in_channels, rank, base.kernel_size, base.stride,
                                       base.padding, bias=False)  # fmt: skip
            self.lora_up = nn.Conv2d(rank, base.out_channels, 1, bias=False)
        else:
            raise TypeError(f"LoRA needs a Linear or Conv2d layer, got {type(base).__name__}")
        nn.init.kaiming_uniform_(self.lora_down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_up.weight)
        self.rank = rank
        self.register_buffer("alpha", torch.tensor(float(alpha)))
        self.scale = float(alpha) / rank  # a Python float: no device sync per call
        self.register_load_state_dict_post_hook(lambda module, _: module.set_alpha(module.alpha))
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()

    def set_alpha(self, alpha: Tensor | float) -> None:
        with torch.no_grad():
            self.alpha.fill_(float(alpha))
        self.scale = float(alpha) / self.rank

    def forward(self, x: Tensor) -> Tensor:
        if not torch.is_autocast_enabled(x.device.type):  # a bf16 base layer, fp32 adapter
            x = x.to(self.lora_down.weight.dtype)
        return self.lora_up(self.lora_down(self.dropout(x))) * self.scale


def lora_delta(adapter: LoRAAdapter) -> Tensor:
    """The weight change scale * up @ down, in the base layer's weight shape (fp32)."""
    down = adapter.lora_down.weight.float()
    up = adapter.lora_up.weight.float().flatten(1)  # (out, rank)
    delta = up @ down.flatten(1)  # (out, in * kh * kw)
    return (delta * adapter.scale).reshape(up.shape[0], *down.shape[1:])


class LoRANetwork(nn.Module):
    """Adapters by kohya name, hooked onto the base layers by ``attach``."""

    def __init__(self) -> None:
        super().__init__()
        self.adapters = nn.ModuleDict()
        self.enabled = True
        self._bases: dict[str, nn.Module] = {}
        # every kohya name a file may use for an adapter (SDXL UNets: LDM and diffusers paths)
        self.aliases: dict[str, str] = {}
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []

    def __deepcopy__(self, memo: dict) -> LoRANetwork:
        """A copy of the adapters (EMA) sharing the base layers, not attached."""
        import copy

        clone = LoRANetwork()
        clone.adapters = copy.deepcopy(self.adapters, memo)
        clone._bases = dict(self._bases)
        clone.aliases = dict(self.aliases)
        return clone

    def add(self, name: str, base: nn.Module, rank: int, alpha: float, dropout: float) -> None:
        if name in self.adapters:
            raise ValueError(f"LoRA: two layers map to the name {name!r}")
        self.adapters[name] = LoRAAdapter(base, rank, alpha, dropout)
        self._bases[name] = base

    def attach(self) -> None:
        """Hook every adapter onto its base layer (its output gains the low-rank path)."""
        for name, base in self._bases.items():
            adapter = self.adapters[name]

            def hook(
                module: nn.Module, args: tuple, out: Tensor, a: LoRAAdapter = adapter
            ) -> Tensor:
                if not self.enabled:
                    return out
                return out + a(args[0]).to(out.dtype)

            self._hooks.append(base.register_forward_hook(hook))

    def detach(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()

    @contextmanager
    def disabled(self) -> Iterator[None]:
        """The base model without the adapters, inside the block."""
        was, self.enabled = self.enabled, False
        try:
            yield
        finally:
            self.enabled = was

    def bases(self) -> dict[str, nn.Module]:
        return dict(self._bases)

    @torch.no_grad()
    def merged_weights(self) -> dict[str, Tensor]:
        """kohya name -> the base weight plus the adapter's delta (fp32)."""
        return {name: self._bases[name].weight.float() + lora_delta(self.adapters[name])
                for name in self.adapters}  # fmt: skip

    @torch.no_grad()
    def merge_into_bases(self) -> None:
        """Add each delta into its base layer's weight (in place) and detach the hooks."""
        self.detach()
        for name, adapter in self.adapters.items():
            w = self._bases[name].weight
            w.copy_((w.float() + lora_delta(adapter)).to(w.dtype))


def _transformer_kind(sub: str) -> str:
    if sub in ("proj_in", "proj_out"):
        return "proj"
    return "ff" if ".ff." in f".{sub}." else "attention"


def unet_lora_layers(unet: nn.Module, targets: tuple[str, ...], conv: bool
                     ) -> list[tuple[str, nn.Module]]:  # fmt: skip
    """(LDM module path, layer) of the UNet's layers that get adapters: inside each
    SpatialTransformer the ``targets`` kinds (``attention``: to_q/k/v/out.0; ``proj``: proj_in /
    proj_out; ``ff``: the feed-forward linears); with ``conv`` (LoCon) every Linear / Conv2d of
    the ResBlocks and up/down samplers, as kohya's ResnetBlock2D / Downsample2D / Upsample2D
    targets."""
    found = []
    for path, module in unet.named_modules():
        if isinstance(module, SpatialTransformer):
            kinds: tuple[str, ...] | None = targets
        elif isinstance(module, (ResBlock, Downsample, Upsample)) and conv:
            kinds = None  # all of them
        else:
            continue
        for sub, child in module.named_modules():
            if not sub or not isinstance(child, (nn.Linear, nn.Conv2d)):
                continue
            if kinds is None or _transformer_kind(sub) in kinds:
                found.append((f"{path}.{sub}", child))
    return found


def _is_3x3(layer: nn.Module) -> bool:
    return isinstance(layer, nn.Conv2d) and layer.kernel_size != (1, 1)


def build_lora_network(unet: nn.Module, text_encoder: TextEncoder | None, family: ModelFamily,
                       cfg: LoRAConfig) -> LoRANetwork:  # fmt: skip
    """Adapters for ``unet`` (and ``text_encoder``'s attention / MLP linears, kohya's CLIPAttention
    / CLIPMLP targets, when given), named as kohya; 3x3 convs get ``conv_rank`` / ``conv_alpha``
    (LoCon), everything else ``rank`` / ``alpha`` (kohya's rule). Not attached yet."""
    net = LoRANetwork()
    texts = [emb.model for emb in text_encoder.embedders] if text_encoder is not None else []
    # kohya's names: diffusers UNet paths for SD 1.x / 2.x, LDM paths for SDXL (sd-scripts)
    names = kohya_names(unet, texts, family)
    alpha = cfg.alpha if cfg.alpha is not None else float(cfg.rank)
    conv_alpha = cfg.conv_alpha if cfg.conv_alpha is not None else float(cfg.conv_rank)
    for path, layer in unet_lora_layers(unet, cfg.targets, cfg.conv_rank > 0):
        name = names[Target("unet", 0, path)]
        if _is_3x3(layer):
            net.add(name, layer, cfg.conv_rank, conv_alpha, cfg.dropout)
        else:
            net.add(name, layer, cfg.rank, alpha, cfg.dropout)
    for index, model in enumerate(texts):
        for path, layer in model.named_modules():
            if isinstance(layer, nn.Linear) and (".self_attn." in path or ".mlp." in path):
                net.add(names[Target("text", index, path)], layer, cfg.rank, alpha, cfg.dropout)
    lookup = kohya_lookup(unet, texts, family)
    net.aliases = {alias: names[target] for alias, target in lookup.items()
                   if names[target] in net.adapters}  # fmt: skip
    return net


def _listing(names: list[str]) -> str:
    return ", ".join(names[:3]) + (f" (+{len(names) - 3} more)" if len(names) > 3 else "")


@torch.no_grad()
def load_kohya_weights(net: LoRANetwork, tensors: dict[str, Tensor], source: str,
                       family: str) -> None:  # fmt: skip
    """Copy a kohya LoRA state dict into ``net``; a file that does not fit (a LoRA of another
    model family, other targets or rank) is one error naming the file and the layers. The
    file may name the UNet layers either way kohya writes them (diffusers or LDM paths)."""
    renamed = {}
    for key, value in tensors.items():
        layer, _, rest = key.partition(".")
        renamed[f"{net.aliases.get(layer, layer)}.{rest}"] = value
    tensors = renamed
    layers = sorted({k.split(".", 1)[0] for k in tensors})
    unknown = [n for n in layers if n not in net.adapters]
    if unknown:
        other = "SDXL" if any(n.startswith(("lora_te1_", "lora_te2_")) for n in unknown) else None
        hint = f" (an {other} LoRA?)" if other and not family.startswith("sdxl") else ""
        raise ValueError(f"{source}: {len(unknown)} LoRA layers do not exist in this {family} "
                         f"model{hint}: {_listing(unknown)}")  # fmt: skip
    missing = [n for n in net.adapters if n not in layers]
    if missing:
        raise ValueError(f"{source}: has no weights for {len(missing)} adapters of these "
                         f"lora settings (targets / conv_rank / text_encoder): "
                         f"{_listing(missing)}")  # fmt: skip
    for name, adapter in net.adapters.items():
        for part in ("lora_down", "lora_up"):
            key, param = f"{name}.{part}.weight", getattr(adapter, part).weight
            if key not in tensors or tensors[key].shape != param.shape:
                got = tuple(tensors[key].shape) if key in tensors else None
                raise ValueError(
                    f"{source}: {key} has shape {got}, this model and lora.rank "
                    f"need {tuple(param.shape)} (a LoRA of another model family?)"
                )
            param.copy_(tensors[key].to(param.dtype))
        if f"{name}.alpha" in tensors:
            adapter.set_alpha(tensors[f"{name}.alpha"])
