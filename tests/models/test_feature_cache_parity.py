"""Our DeepCache equals the reference implementation (``DeepCache.DeepCacheSDHelper`` on diffusers'
UNet2DConditionModel, same weights): call by call over a sampling-like sequence of timesteps,
for several intervals and branches (our depth K is its ``cache_branch_id`` K - 1)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from genmodels.models.feature_cache import DeepCache
from tests.models.test_unet_parity import _pair

deepcache = pytest.importorskip("DeepCache")


@pytest.mark.parametrize(("interval", "branch"), [(2, 0), (3, 1), (4, 3)])
@torch.no_grad()
def test_matches_deepcache_sd_helper(interval: int, branch: int) -> None:
    ref, ours = _pair("sd1")
    timesteps = torch.linspace(950.0, 50.0, 7)
    pipe = SimpleNamespace(unet=ref, scheduler=SimpleNamespace(timesteps=timesteps))
    helper = deepcache.DeepCacheSDHelper(pipe=pipe)
    helper.set_params(cache_interval=interval, cache_branch_id=branch)
    helper.enable()
    cache = DeepCache(interval, depth=branch + 1)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 16, 16, generator=g)
    ctx = torch.randn(2, 7, ours.config.context_dim, generator=g)
    cached_differs = []
    try:
        for t in timesteps:
            expected = ref(x, t, encoder_hidden_states=ctx).sample
            actual = ours(x, t, ctx, cache=cache)
            torch.testing.assert_close(actual, expected, atol=1e-4, rtol=0)
            cached_differs.append(not torch.allclose(actual, ours(x, t, ctx), atol=1e-3))
            x = x - 0.1 * expected  # the next step's input depends on this output
    finally:
        helper.disable()
    assert cache.full_calls == len(range(0, 7, interval))
    # the cached evaluations really are approximations, the full ones exact
    assert cached_differs == [i % interval != 0 for i in range(7)]
