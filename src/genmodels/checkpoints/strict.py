"""Strict state-dict loading whose errors name the keys (not torch's RuntimeError dump)."""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

__all__ = ["load_strict"]


def load_strict(
    module: nn.Module, state_dict: Mapping[str, Tensor], what: str = "state dict", prefix: str = ""
) -> None:
    """Load ``state_dict`` into ``module`` with every key and shape matching, else a ValueError
    naming the missing, unexpected or mis-shaped keys (with ``prefix``, as the file spells them).
    """
    own = module.state_dict()
    missing, unexpected = sorted(set(own) - set(state_dict)), sorted(set(state_dict) - set(own))
    if missing or unexpected:
        raise ValueError(
            f"{what} does not match this config: missing keys "
            f"{[prefix + k for k in missing[:8]]}, unexpected keys "
            f"{[prefix + k for k in unexpected[:8]]}"
        )
    bad = [k for k in state_dict if tuple(state_dict[k].shape) != tuple(own[k].shape)]
    if bad:
        k = bad[0]
        raise ValueError(
            f"shape mismatch for {prefix}{k}: checkpoint {tuple(state_dict[k].shape)}, model "
            f"{tuple(own[k].shape)} ({len(bad)} mismatched keys)"
        )
    module.load_state_dict(dict(state_dict), strict=True)
