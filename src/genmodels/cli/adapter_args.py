"""The adapter options of ``genmodels txt2img | img2img | inpaint``: ``--lora``, ``--lora-dir``.

``--lora PATH[:WEIGHT]`` (repeatable) loads a file; ``<lora:NAME:WEIGHT>`` tags in the prompt are
looked up in the ``--lora-dir`` folders (and among the ``--lora`` files, by file name). A
``--lora`` file the prompt does not name is added to the recorded prompt as a tag, so the PNG
says which LoRAs made it and ``--from-png`` (with ``--lora-dir``) applies them again; a stored
``Lora hashes`` entry that differs from the file found is reported.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

from genmodels.pipelines.extra_networks import find_lora, parse_lora_tags

__all__ = ["AdapterPlan", "add_adapter_arguments", "apply_adapters", "plan_adapters"]


def add_adapter_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lora", action="append", default=[], metavar="PATH[:WEIGHT]",
                   help="apply a LoRA / LyCORIS file (repeatable; weight default 1)")  # fmt: skip
    p.add_argument("--lora-dir", action="append", default=[], type=Path, metavar="DIR",
                   help="folder where <lora:NAME:WEIGHT> prompt tags are looked up")  # fmt: skip


def _lora_arg(text: str) -> tuple[Path, float]:
    """``PATH[:WEIGHT]``: the part after the last ``:`` is a weight when it is a number."""
    path, sep, weight = text.rpartition(":")
    if sep and path:
        try:
            return Path(path), float(weight)
        except ValueError:
            pass
    return Path(text), 1.0


@dataclass
class AdapterPlan:
    prompt: str  # the prompt to generate with and record (tags of --lora files added)
    # (name, file, text-encoder weight, UNet weight)
    loras: list[tuple[str, Path, float, float]] = field(default_factory=list)


def plan_adapters(args: argparse.Namespace, prompt: str, stored_hashes: str | None) -> AdapterPlan:
    """Resolve every LoRA before the model is loaded (ValueError naming a missing file)."""
    known: dict[str, Path] = {}
    extra_tags = []
    for text in args.lora:
        path, weight = _lora_arg(text)
        if not path.is_file():
            raise ValueError(f"--lora {text}: no such file {path}")
        known[path.stem] = path
        extra_tags.append((path.stem, weight))
    named = {tag.name for tag in parse_lora_tags(prompt)}
    added = "".join(f" <lora:{name}:{w:g}>" for name, w in extra_tags if name not in named)
    plan = AdapterPlan(prompt + added if added else prompt)
    folders = [*args.lora_dir, *{p.parent for p in known.values()}]
    for tag in parse_lora_tags(plan.prompt):
        try:
            path = known.get(tag.name) or find_lora(tag.name, folders)
        except ValueError as exc:
            source = f"--from-png {args.from_png}: " if args.from_png else ""
            raise ValueError(f"{source}{exc}") from None
        plan.loras.append((tag.name, path, tag.text_weight, tag.unet_weight))
    _check_hashes(plan, stored_hashes)
    return plan


def _check_hashes(plan: AdapterPlan, stored: str | None) -> None:
    """Warn when a LoRA named in a PNG's ``Lora hashes`` resolves to a different file."""
    if not stored:
        return
    from genmodels.adapters.hashes import lora_hash

    recorded = dict(item.strip().rsplit(": ", 1) for item in stored.split(",") if ": " in item)
    for name, path, _, _ in plan.loras:
        want = recorded.get(name.replace(":", "").replace(",", ""))
        if want and want != lora_hash(path):
            print(f"warning: LoRA {name}: {path} has hash {lora_hash(path)}, the PNG recorded "
                  f"{want} (a different file?)", file=sys.stderr)  # fmt: skip


def apply_adapters(pipe, plan: AdapterPlan) -> None:
    """Load the planned LoRAs into ``pipe`` (named as in the prompt)."""
    for name, path, te, unet in plan.loras:
        lora = pipe.load_lora(path, unet_weight=unet, text_weight=te)
        lora.name = name
