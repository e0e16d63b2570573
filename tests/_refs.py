"""Import helpers for the reference libraries used by parity tests.

k-diffusion's package ``__init__`` imports torchvision, scikit-image and CLIP, none of which we
install (torchvision does not import beside our torch build). Its ``sampling`` and ``external``
modules only need ``utils.append_dims``-level helpers, so we load them from their files under a
synthetic package whose ``utils`` module is loaded with torchvision stubbed out.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest

_TV_STUBS = ("torchvision", "torchvision.transforms", "torchvision.transforms.functional")


def _stub_torchvision() -> bool:
    """Put a stub torchvision in sys.modules; True if we did (remove it again after use)."""
    if "torchvision" in sys.modules:
        return False
    tv = types.ModuleType("torchvision")
    transforms = types.ModuleType("torchvision.transforms")
    functional = types.ModuleType("torchvision.transforms.functional")
    transforms.functional = functional
    tv.transforms = transforms
    sys.modules.update(
        {
            "torchvision": tv,
            "torchvision.transforms": transforms,
            "torchvision.transforms.functional": functional,
        }
    )
    return True


def k_diffusion() -> types.SimpleNamespace:
    """k-diffusion's ``sampling``, ``external`` and ``utils`` modules, or skip the test."""
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("k-diffusion is not installed (pip install --no-deps k-diffusion)")
    root = Path(next(iter(spec.submodule_search_locations)))
    name = "_kdiff_ref"
    if name not in sys.modules:
        stubbed = _stub_torchvision()
        pkg = types.ModuleType(name)
        pkg.__path__ = [str(root)]
        sys.modules[name] = pkg
        for sub in ("utils", "sampling", "external"):
            mspec = importlib.util.spec_from_file_location(f"{name}.{sub}", root / f"{sub}.py")
            module = importlib.util.module_from_spec(mspec)
            sys.modules[f"{name}.{sub}"] = module
            mspec.loader.exec_module(module)
            setattr(pkg, sub, module)
        if stubbed:  # other libraries (diffusers) probe for torchvision: leave no stub behind
            for mod in _TV_STUBS:
                sys.modules.pop(mod, None)
    pkg = sys.modules[name]
    return types.SimpleNamespace(sampling=pkg.sampling, external=pkg.external, utils=pkg.utils)
