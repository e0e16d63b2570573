"""The adapter options of ``genmodels txt2img | img2img | inpaint``: ``--lora``, ``--lora-dir``,
``--embeddings-dir``.

``--lora PATH[:WEIGHT]`` (repeatable) loads a file; ``<lora:NAME:WEIGHT>`` tags in the prompt are
looked up in the ``--lora-dir`` folders (and among the ``--lora`` files, by file name). A
``--lora`` file the prompt does not name is added to the recorded prompt as a tag, so the PNG
says which LoRAs made it and ``--from-png`` (with ``--lora-dir``) applies them again; a stored
``Lora hashes`` entry that differs from the file found is reported, and a LoRA whose name is
not found is looked up by that hash in the LoRA folders (as A1111 does).

Textual-inversion embeddings (``NAME.pt`` / ``.bin`` / ``.safetensors`` in an
``--embeddings-dir``) are loaded when the prompt or negative prompt names them; an embedding a
PNG's ``TI hashes`` records must be found there again.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

from genmodels.pipelines.extra_networks import (
    embedding_files,
    find_lora,
    parse_lora_tags,
    used_embeddings,
)

__all__ = [
    "AdapterPlan", "add_adapter_arguments", "add_adapter_folder_arguments", "apply_adapters",
    "plan_adapters",
]  # fmt: skip


def add_adapter_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lora", action="append", default=[], metavar="PATH[:WEIGHT]",
                   help="apply a LoRA / LyCORIS file (repeatable; weight default 1)")  # fmt: skip
    add_adapter_folder_arguments(p)


def add_adapter_folder_arguments(p: argparse.ArgumentParser) -> None:
    """``--lora-dir`` and ``--embeddings-dir`` (generation commands and ``genmodels serve``)."""
    p.add_argument(
        "--lora-dir",
        action="append",
        default=[],
        type=Path,
        metavar="DIR",
        help="folder where <lora:NAME:WEIGHT> prompt tags are looked up (repeatable)",
    )
    p.add_argument(
        "--embeddings-dir",
        action="append",
        default=[],
        type=Path,
        metavar="DIR",
        help="folder of textual-inversion embeddings, used by file name (repeatable)",
    )


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
    embeddings: dict[str, Path] = field(default_factory=dict)  # every file of --embeddings-dir
    required_embeddings: list[str] = field(default_factory=list)  # names a PNG's TI hashes hold


def plan_adapters(
    args: argparse.Namespace, prompt: str, stored_hashes: str | None, stored_ti: str | None = None
) -> AdapterPlan:
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
    hashes = _recorded(stored_hashes)
    for tag in parse_lora_tags(plan.prompt):
        try:
            path = known.get(tag.name) or find_lora(tag.name, folders)
        except ValueError as exc:
            # as A1111: a LoRA renamed since is found by the hash the PNG recorded
            path = _find_by_hash(hashes.get(_clean(tag.name)), folders)
            if path is None:
                source = f"--from-png {args.from_png}: " if args.from_png else ""
                raise ValueError(f"{source}{exc}") from None
        plan.loras.append((tag.name, path, tag.text_weight, tag.unet_weight))
    _check_hashes(plan, stored_hashes)
    _plan_embeddings(args, plan, stored_ti)
    return plan


def _plan_embeddings(args: argparse.Namespace, plan: AdapterPlan, stored: str | None) -> None:
    plan.embeddings = embedding_files(args.embeddings_dir)
    recorded = list(_recorded(stored))
    known = {name.lower() for name in plan.embeddings}
    missing = [name for name in recorded if name.lower() not in known]
    if missing:
        where = ", ".join(map(str, args.embeddings_dir)) or "no --embeddings-dir given"
        raise ValueError(
            f"--from-png {args.from_png}: the image used the embeddings {', '.join(missing)} "
            f"(TI hashes), not found in {where}"
        )


def _clean(name: str) -> str:
    return name.replace(":", "").replace(",", "")  # A1111 drops these from infotext names


def _recorded(stored: str | None) -> dict[str, str]:
    """``name: hash, ...`` (A1111's ``Lora hashes`` / ``TI hashes``) as a dict."""
    items = (item.strip().rsplit(": ", 1) for item in (stored or "").split(",") if ": " in item)
    return {name: value for name, value in items}


def _find_by_hash(short_hash: str | None, folders: list[Path]) -> Path | None:
    """The LoRA file in ``folders`` with A1111's short hash ``short_hash``, if any."""
    if not short_hash:
        return None
    from genmodels.adapters.hashes import lora_hash
    from genmodels.pipelines.extra_networks import LORA_SUFFIXES

    for folder in folders:
        for path in sorted(Path(folder).glob("*")) if Path(folder).is_dir() else ():
            if path.suffix.lower() in LORA_SUFFIXES and path.is_file():
                if lora_hash(path) == short_hash:
                    return path
    return None


def _check_hashes(plan: AdapterPlan, stored: str | None) -> None:
    """Warn when a LoRA named in a PNG's ``Lora hashes`` resolves to a different file."""
    if not stored:
        return
    from genmodels.adapters.hashes import lora_hash

    recorded = _recorded(stored)
    tagged = {_clean(name) for name, *_ in plan.loras}
    for name in recorded.keys() - tagged:
        print(f"warning: the PNG's Lora hashes name {name}, but its prompt has no <lora:{name}:"
              "WEIGHT> tag (the weight is unknown): not applied", file=sys.stderr)  # fmt: skip
    for name, path, _, _ in plan.loras:
        want = recorded.get(_clean(name))
        if want and want != lora_hash(path):
            print(f"warning: LoRA {name}: {path} has hash {lora_hash(path)}, the PNG recorded "
                  f"{want} (a different file?)", file=sys.stderr)  # fmt: skip


def apply_adapters(pipe, plan: AdapterPlan, negative_prompt: str = "") -> None:
    """Load the planned LoRAs (named as in the prompt) and the embeddings the prompts use."""
    for name, path, te, unet in plan.loras:
        lora = pipe.load_lora(path, unet_weight=unet, text_weight=te)
        lora.name = name
    paths = used_embeddings(plan.embeddings, plan.prompt, negative_prompt)
    if paths:
        pipe.load_embeddings(paths)
