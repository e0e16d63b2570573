"""Objectives: each reduces its loss on a fixed batch; CFG dropout; DDP-style row slicing."""

from __future__ import annotations

import pytest
import torch

from genmodels.data.digits import load_digits_tensor
from genmodels.models.unet import UNetModel
from genmodels.training.config import ObjectiveConfig
from genmodels.training.objectives import Objective, build_denoiser, build_loss, null_label
from tests.training.helpers import TINY_UNET


def _objective(kind: str, drop: float = 0.0) -> tuple[Objective, UNetModel]:
    torch.manual_seed(0)
    model = UNetModel(TINY_UNET)
    cfg = ObjectiveConfig(kind=kind, cond_drop_prob=drop)
    denoiser = build_denoiser(model, cfg)
    return Objective(denoiser, build_loss(denoiser, cfg), null_label(11), drop), model


@pytest.mark.parametrize("kind", ["eps", "v", "edm", "flow"])
def test_few_steps_reduce_loss_on_fixed_batch(kind):
    x, y = load_digits_tensor(8)
    x0, labels = x[:16], y[:16]
    obj, model = _objective(kind)
    draws = obj.draw(16, (1, 8, 8), torch.Generator().manual_seed(1))
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)

    def loss() -> torch.Tensor:
        return obj.loss(x0, labels, draws).mean()

    with torch.no_grad():
        before = float(loss())
    for _ in range(15):
        opt.zero_grad()
        loss().backward()
        opt.step()
    with torch.no_grad():
        after = float(loss())
    assert after < 0.7 * before, (kind, before, after)


def test_cfg_dropout_uses_null_label():
    obj, _ = _objective("edm", drop=0.5)
    seen = []
    inner = obj.denoiser

    def spy(x, sigma, **cond):
        seen.append(cond["y"].clone())
        return inner(x, sigma, **cond)

    obj.denoiser = spy
    draws = obj.draw(64, (1, 8, 8), torch.Generator().manual_seed(0))
    labels = torch.arange(64) % 10
    obj.loss(torch.zeros(64, 1, 8, 8), labels, draws)
    y = seen[0]
    assert torch.equal(y == 10, draws.drop)
    assert torch.equal(y[~draws.drop], labels[~draws.drop])
    assert 16 < int(draws.drop.sum()) < 48


def test_rows_of_a_global_batch_equal_the_whole():
    obj, _ = _objective("v", drop=0.2)
    x, y = load_digits_tensor(8)
    draws = obj.draw(8, (1, 8, 8), torch.Generator().manual_seed(3))
    with torch.no_grad():
        whole = obj.loss(x[:8], y[:8], draws)
        parts = torch.cat(
            [obj.loss(x[i : i + 4], y[i : i + 4], draws.rows(slice(i, i + 4))) for i in (0, 4)]
        )
    torch.testing.assert_close(whole, parts)


def test_bad_inputs():
    obj, _ = _objective("eps")
    draws = obj.draw(4, (1, 8, 8), torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="unconditional class"):
        obj.loss(torch.zeros(4, 1, 8, 8), torch.tensor([0, 1, 10, 2]), draws)
    with pytest.raises(ValueError, match="needs labels"):
        obj.loss(torch.zeros(4, 1, 8, 8), None, draws)
    with pytest.raises(ValueError, match="do not match"):
        obj.loss(torch.zeros(2, 1, 8, 8), torch.zeros(2, dtype=torch.long), draws)
    with pytest.raises(ValueError, match="valid: eps, v, edm, flow"):
        build_denoiser(torch.nn.Identity(), ObjectiveConfig(kind="x1"))
