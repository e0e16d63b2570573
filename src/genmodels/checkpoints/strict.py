"""The one strict state-dict loader: every key and shape must match, and an error names the
missing, unexpected and mis-shaped keys (not torch's RuntimeError dump).

A leaf module (it imports nothing of genmodels), so every layer that loads weights uses it.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

__all__ = ["load_strict", "strict_problems"]

_SHOWN = 8  # keys listed per kind of problem


def _listing(items: list[str]) -> str:
    more = f" (+{len(items) - _SHOWN} more)" if len(items) > _SHOWN else ""
    return ", ".join(items[:_SHOWN]) + more


def strict_problems(
    module: nn.Module, state_dict: Mapping[str, Tensor], prefix: str = ""
) -> list[str]:
    """What keeps ``state_dict`` from loading strictly into ``module``: one line per kind
    (missing keys, unexpected keys, shape mismatch), keys spelt with ``prefix`` as the file
    does; empty when it fits."""
    own = module.state_dict()
    missing = [prefix + k for k in sorted(set(own) - set(state_dict))]
    unexpected = [prefix + k for k in sorted(set(state_dict) - set(own))]
    shapes = [
        f"{prefix}{k}: expected {tuple(own[k].shape)}, got {tuple(state_dict[k].shape)}"
        for k in sorted(set(own) & set(state_dict))
        if tuple(own[k].shape) != tuple(state_dict[k].shape)
    ]
    lines = [f"{label}: {_listing(items)}"
             for label, items in (("missing keys", missing), ("unexpected keys", unexpected))
             if items]  # fmt: skip
    if shapes:
        lines.append("shape mismatch for " + _listing(shapes))
    return lines


def load_strict(
    module: nn.Module, state_dict: Mapping[str, Tensor], what: str = "state dict", prefix: str = ""
) -> None:
    """Load ``state_dict`` into ``module`` with every key and shape matching, else a ValueError
    naming the missing, unexpected and mis-shaped keys (with ``prefix``, as the file spells them).
    """
    problems = strict_problems(module, state_dict, prefix)
    if problems:
        raise ValueError(f"{what} does not match the model: " + "; ".join(problems))
    module.load_state_dict(dict(state_dict), strict=True)
