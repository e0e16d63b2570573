"""ControlNet units in the A1111 ``parameters`` text, as sd-webui-controlnet writes them.

Each unit is one infotext entry (JSON-quoted by ``metadata.format_infotext``, as A1111's
``quote``)::

    ControlNet 0: "Module: none, Model: control_v11p_sd15_canny [d14c016b], Weight: 1.0,
    Resize Mode: Just Resize, Processor Res: 512, Threshold A: 0.5, Threshold B: 0.5,
    Guidance Start: 0.0, Guidance End: 1.0, Pixel Perfect: False, Control Mode: Balanced"

(one line): ``ControlNetUnit.serialize`` of sd-webui-controlnet 1.1.4xx, whose module "none"
reports its default slider values (512, 0.5, 0.5). The model hash in brackets is A1111's old
short hash (``sd_models.model_hash``: sha256 of the 64 KiB at offset 1 MiB, 8 hex digits), which
sd-webui-controlnet puts in its model list. Parsing also reads the older lowercase layout
(``preprocessor: none, model: ..., weight: 1, starting/ending: (0, 1), ...``).
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = ["ControlRecord", "control_infotext", "legacy_model_hash", "parse_control_infotext"]

_KEY = re.compile(r"^ControlNet (\d+)$")
_PAIR = re.compile(r"\s*([\w][\w /]*?)\s*:\s*(\([^)]*\)|[^,]*)(?:,|$)")


class _Unit(Protocol):
    weight: float
    start: float
    end: float

    @property
    def label(self) -> str: ...


def legacy_model_hash(path: str | os.PathLike) -> str:
    """A1111's old model hash: first 8 hex digits of the sha256 of the 0x10000 bytes at offset
    0x100000 (of nothing for smaller files)."""
    with open(path, "rb") as f:
        f.seek(0x100000)
        return hashlib.sha256(f.read(0x10000)).hexdigest()[:8]


def _clean(label: str) -> str:
    """sd-webui-controlnet refuses ',' and ':' inside a unit's values."""
    return label.replace(",", "_").replace(":", "_")


def control_infotext(units: Sequence[_Unit]) -> dict[str, str]:
    """``{"ControlNet i": "Module: none, Model: ..., ..."}`` for each unit."""
    out = {}
    for i, u in enumerate(units):
        fields = {
            "Module": "none", "Model": _clean(u.label), "Weight": float(u.weight),
            "Resize Mode": "Just Resize", "Processor Res": 512, "Threshold A": 0.5,
            "Threshold B": 0.5, "Guidance Start": float(u.start), "Guidance End": float(u.end),
            "Pixel Perfect": False, "Control Mode": "Balanced",
        }  # fmt: skip
        out[f"ControlNet {i}"] = ", ".join(f"{k}: {v}" for k, v in fields.items())
    return out


@dataclass(frozen=True)
class ControlRecord:
    """What a PNG says about one ControlNet unit."""

    index: int
    module: str
    model: str  # "name [hash]" (or "None")
    weight: float
    start: float
    end: float

    @property
    def name(self) -> str:
        return re.sub(r"\s*\[[0-9a-fA-F]+\]$", "", self.model)

    @property
    def hash(self) -> str | None:
        m = re.search(r"\[([0-9a-fA-F]+)\]$", self.model)
        return m.group(1).lower() if m else None


def _number(fields: Mapping[str, str], key: str, default: float, what: str) -> float:
    if key not in fields:
        return default
    try:
        value = float(fields[key])
    except ValueError:
        raise ValueError(f"{what}: {key} {fields[key][:30]!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{what}: {key} {fields[key][:30]!r} is not finite")
    return value


def parse_control_infotext(extra: Mapping[str, str]) -> list[ControlRecord]:
    """The ControlNet units of an infotext's extra entries (``ControlNet 0``, ...), by index."""
    records = []
    for key, text in extra.items():
        m = _KEY.match(key)
        if not m:
            continue
        what = f"infotext {key}"
        fields = {k.strip().lower(): v.strip() for k, v in _PAIR.findall(text)}
        start, end = 0.0, 1.0
        if "starting/ending" in fields:  # older layout: "(0, 1)"
            parts = fields["starting/ending"].strip("()").split(",")
            if len(parts) == 2:
                start = _number({"s": parts[0]}, "s", 0.0, what)
                end = _number({"e": parts[1]}, "e", 1.0, what)
        start = _number(fields, "guidance start", start, what)
        end = _number(fields, "guidance end", end, what)
        records.append(ControlRecord(
            int(m.group(1)), fields.get("module", fields.get("preprocessor", "none")),
            fields.get("model", "None"), _number(fields, "weight", 1.0, what), start, end,
        ))  # fmt: skip
    return sorted(records, key=lambda r: r.index)
