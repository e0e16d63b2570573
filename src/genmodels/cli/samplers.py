"""``genmodels samplers``: the table of available samplers and schedulers."""

from __future__ import annotations

import argparse

from genmodels.diffusion.samplers.registry import A1111_ALIASES, SAMPLER_INFO, SAMPLERS
from genmodels.diffusion.schedules import A1111_SCHEDULER_ALIASES, SCHEDULERS


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "samplers",
        help="list the available samplers and schedulers",
        description="List samplers (k-diffusion/ComfyUI names, with A1111 display names) and "
        "the named sigma schedulers.",
    )
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables")
    parser.set_defaults(func=run)


def _table(header: list[str], rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(x) for x in col) for col in zip(header, *rows)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*r) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def sampler_rows() -> list[list[str]]:
    a1111: dict[str, list[str]] = {}
    for display, (sampler, scheduler) in A1111_ALIASES.items():
        if scheduler == SAMPLER_INFO[sampler].a1111_scheduler:  # the plain name, no suffix
            a1111.setdefault(sampler, []).append(display)
    rows = []
    for name in SAMPLERS:
        info = SAMPLER_INFO.get(name)
        kind = info.kind if info else "?"
        order = str(info.order) if info else "?"
        calls = str(info.model_calls_per_step) if info else "?"
        desc = "; ".join(x for x in (info.family, info.description) if x) if info else ""
        rows.append([name, ", ".join(a1111.get(name, [])), kind, order, calls, desc])
    return rows


def scheduler_rows() -> list[list[str]]:
    a1111: dict[str, list[str]] = {}
    for display, name in A1111_SCHEDULER_ALIASES.items():
        a1111.setdefault(name, []).append(display)
    rows = []
    for name, fn in SCHEDULERS.items():
        doc = (fn.__doc__ or "").strip().splitlines()
        rows.append([name, ", ".join(a1111.get(name, [])), doc[0] if doc else ""])
    return rows


def a1111_rows() -> list[list[str]]:
    """What each A1111 sampler name runs here: sampler, schedule, and how A1111 runs it."""
    rows = []
    for display, (sampler, scheduler) in A1111_ALIASES.items():
        info = SAMPLER_INFO[sampler]
        if scheduler is not None and scheduler not in info.a1111_schedules:
            schedule = f"{scheduler} (always, as A1111)"
        else:
            schedule = scheduler or "the --scheduler (A1111 'Automatic': normal)"
        desc = "; ".join(x for x in (info.family, info.description) if x)
        rows.append([display, sampler, schedule, desc])
    return rows


def run(args: argparse.Namespace) -> int:
    print("Samplers")
    header = ["name", "A1111 name", "kind", "order", "calls/step", "method"]
    print(_table(header, sampler_rows(), args.markdown))
    print()
    print("Schedulers (A1111 adds ' Karras' / ' Exponential' to a sampler name for those)")
    print(_table(["name", "A1111 name", "spacing"], scheduler_rows(), args.markdown))
    print()
    print("A1111 sampler names (accepted wherever a sampler name is; written to PNGs)")
    print(_table(["A1111 name", "runs", "schedule", "what it does"], a1111_rows(), args.markdown))
    return 0
