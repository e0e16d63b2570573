"""EMA decay maths (k-diffusion EMAWarmup, LitEma) and the LR schedules."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from genmodels.training.config import EMAConfig, LambdaCycle, OptimConfig
from genmodels.training.ema import EMA, ema_decay, ema_update
from genmodels.training.lr_schedules import lr_lambda, make_scheduler
from genmodels.training.tasks import build_config
from tests._refs import k_diffusion


@pytest.mark.parametrize(
    "kw",
    [
        dict(power=2 / 3, inv_gamma=1.0, max_value=0.9999),
        dict(power=3 / 4, inv_gamma=10.0, min_value=0.1, max_value=0.999, start_at=5),
    ],
)
def test_power_warmup_matches_k_diffusion(kw):
    K = k_diffusion()
    ref = K.utils.EMAWarmup(**kw)
    cfg = EMAConfig(kind="power", **kw)
    for step in range(3000):
        assert ema_decay(cfg, step) == pytest.approx(ref.get_value(), abs=1e-12)
        ref.step()


def test_power_warmup_analytic():
    cfg = EMAConfig(power=0.5, inv_gamma=1.0, max_value=1.0)
    assert ema_decay(cfg, 0) == 0.0  # the first update copies the weights
    assert ema_decay(cfg, 3) == pytest.approx(1 - 4**-0.5)  # 1 - (1 + 3)^-1/2 = 0.5


def test_litema_decay():
    cfg = EMAConfig(kind="litema", decay=0.9999)
    # ldm LitEma: num_updates counts from 1, decay = min(decay, (1 + n) / (10 + n))
    assert ema_decay(cfg, 0) == pytest.approx(2 / 11)
    assert ema_decay(cfg, 99) == pytest.approx(101 / 110)
    assert ema_decay(cfg, 10**7) == 0.9999


def test_ema_update_matches_k_diffusion_and_copies_buffers():
    K = k_diffusion()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    ours = EMA(model, EMAConfig(power=0.5, max_value=1.0))
    ref = EMA(model, EMAConfig()).model  # an independent copy
    decays = []
    for _ in range(4):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
            model[1].running_mean.add_(1)
        decays.append(ours.update(model))
        K.utils.ema_update(model, ref, decays[-1])
    assert decays[0] == 0.0 and ours.step == 4
    for a, b in zip(ours.model.state_dict().values(), ref.state_dict().values()):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(ours.model[1].running_mean, model[1].running_mean)


def test_ema_update_formula():
    a, b = nn.Linear(2, 2), nn.Linear(2, 2)
    expect = [0.9 * pb + 0.1 * pa for pa, pb in zip(a.parameters(), b.parameters())]
    ema_update(a, b, 0.9)
    for e, p in zip(expect, b.parameters()):
        torch.testing.assert_close(p, e.detach())


def test_cosine_with_warmup():
    f = lr_lambda(OptimConfig(schedule="cosine", warmup_steps=10, min_lr_ratio=0.1), 110)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f(110) == pytest.approx(0.1) and f(500) == pytest.approx(0.1)


def test_constant_and_lambda_linear():
    assert lr_lambda(OptimConfig(schedule="constant"), 10)(5) == 1.0
    assert lr_lambda(OptimConfig(schedule="constant", warmup_steps=4), 10)(1) == 0.5
    # ldm LambdaLinearScheduler as in SD's v1 config: warm-up 10000 from 1e-6 to 1, then flat
    cfg = OptimConfig(schedule="lambda_linear", warmup_steps=10000, f_start=1e-6)
    f = lr_lambda(cfg, 10**6)
    assert f(0) == pytest.approx(1e-6)
    assert f(5000) == pytest.approx(1e-6 + (1 - 1e-6) * 0.5)
    assert f(20000) == pytest.approx(1.0)
    # decaying cycle: f_min + (f_max - f_min) * (L - n) / L
    g = lr_lambda(OptimConfig(schedule="lambda_linear", f_min=0.2, cycle_length=100), 100)
    assert g(50) == pytest.approx(0.2 + 0.8 * 0.5)
    assert g(100) == pytest.approx(0.2)
    # past its cycle ldm's scheduler has no value (ours would go below f_min): refused
    with pytest.raises(ValueError, match="cycle_length=100 is shorter than the run"):
        lr_lambda(OptimConfig(schedule="lambda_linear", f_min=0.2, cycle_length=100), 101)


def test_lambda_linear_matches_ldm_formula():
    # ldm LambdaLinearScheduler.schedule(n) for one cycle, written out from its definition
    warm, f_start, f_max, f_min, length = 7, 0.01, 2.0, 0.5, 50

    def ldm(n: int) -> float:
        if n < warm:
            return (f_max - f_start) / warm * n + f_start
        return f_min + (f_max - f_min) * (length - n) / length

    cfg = OptimConfig(schedule="lambda_linear", warmup_steps=warm, f_start=f_start,
                      f_max=f_max, f_min=f_min, cycle_length=length)  # fmt: skip
    f = lr_lambda(cfg, 50)
    for n in range(51):
        assert f(n) == pytest.approx(ldm(n), rel=1e-12)


def test_lambda_linear_cycles_match_ldm():
    """Two cycles against ldm's LambdaLinearScheduler, written out from its definition: step n
    belongs to the first cycle with cumsum(cycle_lengths) >= n (find_in_interval's ``n <= cl``),
    then the one-cycle formula at n minus the cycle's start."""
    warm, length = [3, 2], [10, 8]
    f_start, f_max, f_min = [0.1, 0.3], [1.0, 0.8], [0.5, 0.2]
    cum = [0, 10, 18]

    def ldm(n: int) -> float:
        cycle = next(i for i, end in enumerate(cum[1:]) if n <= end)
        m = n - cum[cycle]
        if m < warm[cycle]:
            return (f_max[cycle] - f_start[cycle]) / warm[cycle] * m + f_start[cycle]
        return f_min[cycle] + (f_max[cycle] - f_min[cycle]) * (length[cycle] - m) / length[cycle]

    cycles = tuple(LambdaCycle(*args) for args in zip(warm, length, f_start, f_max, f_min))
    cfg = OptimConfig(schedule="lambda_linear", lambda_cycles=cycles)
    f = lr_lambda(cfg, 18)
    assert [f(n) for n in range(19)] == pytest.approx([ldm(n) for n in range(19)], rel=1e-12)
    with pytest.raises(ValueError, match="sum of lambda_cycles' lengths=18 is shorter"):
        lr_lambda(cfg, 19)
    bad = OptimConfig(schedule="lambda_linear", lambda_cycles=(LambdaCycle(1, 0),))
    with pytest.raises(ValueError, match=r"optim.lambda_cycles\[0\]: need cycle_length > 0"):
        lr_lambda(bad, 1)
    # from YAML: a list of mappings, keys checked
    # (the shared optim section: the same in every task's config)
    for task in ("diffusion", "autoencoder"):
        loaded = build_config(
            task, None, ["optim.lambda_cycles=[{warmup_steps: 3, cycle_length: 10}]"]
        )
        assert loaded.optim.lambda_cycles == (LambdaCycle(3, 10),)
        with pytest.raises(ValueError, match=r"optim.lambda_cycles\[0\].cycle_lenght: unknown key"):
            build_config(task, None, ["optim.lambda_cycles=[{warmup_steps: 3, cycle_lenght: 10}]"])


def test_scheduler_drives_optimizer():
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=2.0)
    sched = make_scheduler(opt, OptimConfig(schedule="constant", warmup_steps=2), 10)
    lrs = []
    for _ in range(3):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == [1.0, 2.0, 2.0]
    with pytest.raises(ValueError, match="warmup_steps"):
        lr_lambda(OptimConfig(warmup_steps=-1), 10)
