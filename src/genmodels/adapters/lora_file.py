"""Reading a LoRA-family file: its keys grouped by the module they adapt, in every known format.

A key is ``<module name>.<tensor name>``:

* kohya / A1111 / LyCORIS: ``lora_unet_<path>`` / ``lora_te[12]_<path>`` (no dots) followed by
  ``lora_down.weight``, ``lora_up.weight``, ``lora_mid.weight``, ``alpha``, ``hada_*``,
  ``lokr_*`` or ``diff`` (``deltas.KINDS``);
* diffusers / PEFT: ``unet.<dotted diffusers path>`` or ``text_encoder[_2].<path>`` followed by
  ``lora_A.weight`` / ``lora_B.weight`` (PEFT), ``lora.down.weight`` / ``lora.up.weight`` or
  ``lora_linear_layer.down|up.weight`` (older diffusers), or the oldest attention-processor
  style ``....attn1.processor.to_q_lora.down.weight``. The PEFT scale ``lora_alpha / r`` comes
  from the ``lora_adapter_metadata`` JSON that diffusers writes (``unet.lora_alpha``,
  ``unet.alpha_pattern``, ...), or from ``<module>.alpha`` keys; without either it is 1.

``parse_lora`` returns the layers by our module (``kohya_names.Target``) and lists every key it
could not place, so that nothing is ignored silently.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from torch import Tensor

from genmodels.adapters.deltas import KINDS
from genmodels.adapters.kohya_names import Target

__all__ = ["LoraLayer", "ParsedLora", "guess_lora_family", "parse_lora"]

_TENSOR_NAMES = {n for names in KINDS.values() for n in names} | {"alpha"}
# diffusers / PEFT tensor names -> ours
_DOTTED_SUFFIXES = {
    "lora_A.weight": "lora_down.weight",
    "lora_B.weight": "lora_up.weight",
    "lora.down.weight": "lora_down.weight",
    "lora.up.weight": "lora_up.weight",
    "lora_linear_layer.down.weight": "lora_down.weight",
    "lora_linear_layer.up.weight": "lora_up.weight",
    "lora_down.weight": "lora_down.weight",
    "lora_up.weight": "lora_up.weight",
    "alpha": "alpha",
}
_PROCESSOR = re.compile(r"^(.*)\.processor\.(to_q|to_k|to_v|to_out)_lora\.(down|up|alpha)")
_OLD_TEXT = re.compile(
    r"^(text_encoder(?:_2)?\..*\.self_attn)\.(to_q|to_k|to_v|to_out)_lora\.(down|up|alpha)"
)
_PROCESSOR_PROJ = {"to_q": "to_q", "to_k": "to_k", "to_v": "to_v", "to_out": "to_out.0"}
_TEXT_PROJ = {"to_q": "q_proj", "to_k": "k_proj", "to_v": "v_proj", "to_out": "out_proj"}
_UNET_ROOTS = ("down_blocks.", "mid_block.", "up_blocks.")


@dataclass
class LoraLayer:
    """The tensors a file stores for one module (our tensor names) and its alpha."""

    name: str  # the module's name in the file
    tensors: dict[str, Tensor] = field(default_factory=dict)
    alpha: float | None = None


@dataclass
class ParsedLora:
    layers: dict[Target, LoraLayer]
    unknown: list[str]  # keys of the file that fit no module of the model


def _split(key: str) -> tuple[str, str] | None:
    """(module name, our tensor name) of one key, or None for an unknown layout."""
    m = _PROCESSOR.match(key) or _OLD_TEXT.match(key)
    if m and key[m.end() :] in ("", ".weight"):
        base, proj, side = m.groups()
        table = _TEXT_PROJ if m.re is _OLD_TEXT else _PROCESSOR_PROJ
        base = "unet." + base if base.startswith(_UNET_ROOTS) else base
        return f"{base}.{table[proj]}", "alpha" if side == "alpha" else f"lora_{side}.weight"
    if "." in key and "." not in key.split(".", 1)[0] and key.startswith("lora_"):
        name, rest = key.split(".", 1)  # kohya: no dots in the module name
        return (name, rest) if rest in _TENSOR_NAMES else None
    for suffix, ours in _DOTTED_SUFFIXES.items():
        if key.endswith("." + suffix):
            name = key[: -len(suffix) - 1]
            return ("unet." + name if name.startswith(_UNET_ROOTS) else name), ours
    return None


def _peft_alphas(metadata: Mapping[str, str]) -> dict[str, dict]:
    """Per component folder ("unet", "text_encoder", ...): its PEFT config entries."""
    raw = metadata.get("lora_adapter_metadata")
    if not raw:
        return {}
    try:
        packed = json.loads(raw)
    except json.JSONDecodeError:
        return {}
    out: dict[str, dict] = {}
    for key, value in packed.items() if isinstance(packed, dict) else ():
        folder, _, name = key.partition(".")
        out.setdefault(folder, {})[name] = value
    return out


def _peft_alpha(config: dict, path: str) -> float | None:
    """PEFT ``lora_alpha`` of one module (``alpha_pattern`` first, as PEFT matches it)."""
    for pattern, alpha in (config.get("alpha_pattern") or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", path):
            return float(alpha)
    alpha = config.get("lora_alpha")
    return None if alpha is None else float(alpha)


def parse_lora(
    state_dict: Mapping[str, Tensor],
    metadata: Mapping[str, str],
    lookup: Mapping[str, Target],
) -> ParsedLora:
    """Group the keys of a LoRA file by the module of our model (``lookup``: file module name
    -> ``Target``, from ``kohya_names.kohya_lookup`` and ``diffusers_lookup``)."""
    layers: dict[Target, LoraLayer] = {}
    unknown: list[str] = []
    peft = _peft_alphas(metadata)
    for key, value in state_dict.items():
        split = _split(key)
        target = lookup.get(split[0]) if split else None
        if split is None or target is None:
            unknown.append(key)
            continue
        name, tensor_name = split
        layer = layers.setdefault(target, LoraLayer(name))
        if tensor_name == "alpha":
            layer.alpha = float(value.float().reshape(-1)[0]) if value.numel() else None
        else:
            layer.tensors[tensor_name] = value
    for layer in layers.values():
        folder, _, path = layer.name.partition(".")
        if layer.alpha is None and folder in peft:
            layer.alpha = _peft_alpha(peft[folder], path)
    empty = [t for t, layer in layers.items() if not layer.tensors]
    for target in empty:  # an alpha without weights
        unknown.append(f"{layers.pop(target).name}.alpha")
    return ParsedLora(layers, sorted(unknown))


_CONTEXT_FAMILIES = {768: "SD 1.x", 1024: "SD 2.x", 2048: "SDXL"}
_TEXT_FAMILIES = {768: "SD 1.x", 1024: "SD 2.x"}


def _down(state_dict: Mapping[str, Tensor], pattern: str) -> Tensor | None:
    rx = re.compile(pattern)
    for key, value in state_dict.items():
        if rx.search(key) and value.ndim >= 2:
            return value
    return None


def guess_lora_family(state_dict: Mapping[str, Tensor]) -> str | None:
    """The model family a LoRA was trained for, from its names and widths (None: unknown):
    two text encoders (``lora_te1_`` / ``lora_te2_`` / ``text_encoder_2.``) are SDXL; else the
    cross-attention context width (768 SD 1.x, 1024 SD 2.x, 2048 SDXL) or the text width."""
    keys = list(state_dict)
    if any(k.startswith(("lora_te1_", "lora_te2_", "text_encoder_2.")) for k in keys):
        return "SDXL"
    to_k = _down(state_dict, r"attn2[._]to_k[._](lora_down|lora_A|lora\.down|hada_w1_b)")
    if to_k is not None and to_k.shape[-1] in _CONTEXT_FAMILIES:
        return _CONTEXT_FAMILIES[to_k.shape[-1]]
    q = _down(state_dict, r"^(lora_te_|text_encoder\.).*q_proj[._](lora_down|lora_A|lora\.down)")
    if q is not None and q.shape[-1] in _TEXT_FAMILIES:
        return _TEXT_FAMILIES[q.shape[-1]]
    if any(k.startswith(("lora_te_", "text_encoder.")) for k in keys):
        return "SD 1.x / 2.x"
    return None
