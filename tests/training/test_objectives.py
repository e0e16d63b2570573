"""Objectives (``diffusion.objectives``): each loss reduces on a fixed batch through the loss
contract ``loss_fn(denoiser, x0, cond, sigma=..., noise=...)``; offset noise and a zero-terminal-
SNR schedule reach the loss / denoiser; CFG dropout uses the null label; DDP-style row slicing."""

from __future__ import annotations

import pytest
import torch

from genmodels.data.digits import load_digits_tensor
from genmodels.data.tensor_dataset import ImageTensorDataset
from genmodels.diffusion.losses import DiffusionLoss
from genmodels.diffusion.objectives import (
    ObjectiveConfig,
    build_denoiser,
    build_loss,
    null_label,
)
from genmodels.diffusion.schedules import make_alphas_cumprod
from genmodels.models.unet import UNetModel
from genmodels.training.config import DataConfig, EMAConfig
from genmodels.training.diffusion import Trainer
from genmodels.training.tasks import build_config
from tests.training.helpers import TINY_UNET, tiny_config


def _objective(kind: str, **kw) -> tuple[torch.nn.Module, DiffusionLoss, UNetModel]:
    torch.manual_seed(0)
    model = UNetModel(TINY_UNET)
    cfg = ObjectiveConfig(kind=kind, **kw)
    denoiser = build_denoiser(model, cfg)
    return denoiser, build_loss(denoiser, cfg), model


@pytest.mark.parametrize("kind", ["eps", "v", "edm", "flow"])
def test_few_steps_reduce_loss_on_fixed_batch(kind):
    x, y = load_digits_tensor(8)
    x0, labels = x[:16], y[:16]
    denoiser, loss_fn, model = _objective(kind, cond_drop_prob=0.0)
    sigma, noise = loss_fn.draw(16, (1, 8, 8), generator=torch.Generator().manual_seed(1))
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)

    def loss() -> torch.Tensor:
        return loss_fn(denoiser, x0, {"y": labels}, sigma=sigma, noise=noise).mean()

    with torch.no_grad():
        before = float(loss())
    for _ in range(15):
        opt.zero_grad()
        loss().backward()
        opt.step()
    with torch.no_grad():
        after = float(loss())
    assert after < 0.7 * before, (kind, before, after)


def test_null_label_is_the_last_class():
    assert null_label(11) == 10 and null_label(None) is None


def test_cfg_dropout_uses_null_label(tmp_path):
    """The trainer's CFG dropout: about ``cond_drop_prob`` of the rows get the null class, the
    others their own labels."""
    cfg = tiny_config(
        tmp_path / "run", objective=ObjectiveConfig(kind="edm", cond_drop_prob=0.5),
        data=DataConfig(dataset="digits", size=8, batch_size=64), ema=EMAConfig(enabled=False),
    )  # fmt: skip
    trainer = Trainer(cfg)
    seen = []
    inner = trainer.denoiser

    def spy(x, sigma, **cond):
        seen.append(cond["y"].clone())
        return inner(x, sigma, **cond)

    trainer.denoiser = spy
    indices = trainer.loader.indices(64, 0)  # step 0's global batch
    labels = torch.as_tensor(trainer.dataset.labels)[indices]
    trainer.train_step()
    (y,) = seen
    drop = y == null_label(TINY_UNET.num_classes)
    assert not bool((labels == 10).any())  # the null class is never a real label
    assert torch.equal(y[~drop], labels[~drop])
    assert 16 < int(drop.sum()) < 48


def test_rows_of_a_global_batch_equal_the_whole():
    denoiser, loss_fn, _ = _objective("v")
    x, y = load_digits_tensor(8)
    sigma, noise = loss_fn.draw(8, (1, 8, 8), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        whole = loss_fn(denoiser, x[:8], {"y": y[:8]}, sigma=sigma, noise=noise)
        parts = torch.cat(
            [
                loss_fn(
                    denoiser,
                    x[i : i + 4],
                    {"y": y[i : i + 4]},
                    sigma=sigma[i : i + 4],
                    noise=noise[i : i + 4],
                )
                for i in (0, 4)
            ]
        )
    torch.testing.assert_close(whole, parts)


def test_offset_noise_reaches_the_loss_and_the_trainer(tmp_path):
    cfg = build_config("diffusion", None, ["objective.offset_noise=0.1"])
    assert cfg.objective.offset_noise == 0.1
    denoiser = build_denoiser(UNetModel(TINY_UNET), cfg.objective)
    assert build_loss(denoiser, cfg.objective).offset_noise == 0.1
    for kind in ("eps", "v", "edm", "flow"):
        assert _objective(kind, offset_noise=0.25)[1].offset_noise == 0.25
    trainer = Trainer(tiny_config(tmp_path / "run", objective=cfg.objective))
    assert trainer.loss_fn.offset_noise == 0.1
    assert trainer.train_step()["loss"] > 0


def test_draw_with_offset_noise_shifts_each_sample_and_channel():
    """Offset noise (Guttenberg 2023): the same draw plus offset * N(0, 1), one value per
    (sample, channel), constant over the pixels."""
    _, plain, _ = _objective("edm")
    _, offset, _ = _objective("edm", offset_noise=0.5)
    shape = (3, 16, 16)
    s0, n0 = plain.draw(64, shape, generator=torch.Generator().manual_seed(4))
    s1, n1 = offset.draw(64, shape, generator=torch.Generator().manual_seed(4))
    assert n1.shape == (64, *shape) and s1.shape == (64,)
    torch.testing.assert_close(s1, s0)  # sigma and the pixel noise drawn first, unchanged
    shift = n1 - n0
    torch.testing.assert_close(shift, shift[:, :, :1, :1].expand_as(shift))  # per (n, c)
    per_channel = shift[:, :, 0, 0]  # (64, 3): 0.5 * N(0, 1)
    assert 0.4 < float(per_channel.std()) < 0.6
    assert float((per_channel[:, 0] - per_channel[:, 1]).abs().max()) > 0.1  # not per sample
    # the mean of each (sample, channel) of the noise moves by about the offset's std
    assert float(n0.mean((2, 3)).std()) < 0.1 < 0.4 < float(n1.mean((2, 3)).std())


@pytest.mark.parametrize("kind", ["eps", "v"])
def test_zero_terminal_snr_reaches_the_denoiser(kind):
    cfg = build_config("diffusion", None, [f"objective.kind={kind}",
                                           "objective.zero_terminal_snr=true"])  # fmt: skip
    denoiser = build_denoiser(UNetModel(TINY_UNET), cfg.objective)
    o = cfg.objective
    ac = make_alphas_cumprod(o.beta_schedule, o.num_timesteps, o.linear_start, o.linear_end,
                             zero_terminal_snr=True)  # fmt: skip
    expected = ((1 - ac) / ac).sqrt().float()
    torch.testing.assert_close(denoiser.sigmas, expected)
    plain = build_denoiser(UNetModel(TINY_UNET), ObjectiveConfig(kind=kind))
    top = float(denoiser.sigmas.max())  # near-zero terminal SNR: huge, but finite
    assert bool(torch.isfinite(denoiser.sigmas).all()) and top > 1e3
    assert top > 10 * float(plain.sigmas.max())  # 157 without the rescaling
    torch.testing.assert_close(denoiser.sigmas[0], plain.sigmas[0])  # the first step unchanged
    # the loss draws from the denoiser's table, its largest sigma included
    loss_fn = build_loss(denoiser, cfg.objective)
    sigma, _ = loss_fn.draw(20000, (1, 8, 8), generator=torch.Generator().manual_seed(0))
    assert set(sigma.tolist()) <= set(denoiser.sigmas.tolist())
    assert float(sigma.max()) == top


@pytest.mark.parametrize(
    "schedule",
    [
        ("linear", 1e-4, 2e-2),  # ObjectiveConfig's default schedule
        ("scaled_linear", 0.00085, 0.012),  # SD's
    ],
)
def test_zero_terminal_snr_sigmas_increase_to_the_last_step(schedule):
    """Zero terminal SNR means the last step is the noisiest: the sigma table still increases
    and its last entry is the largest (the sampler's sigma_max)."""
    name, start, end = schedule
    cfg = ObjectiveConfig(kind="v", beta_schedule=name, linear_start=start, linear_end=end,
                          zero_terminal_snr=True)  # fmt: skip
    sigmas = build_denoiser(UNetModel(TINY_UNET), cfg).sigmas
    assert bool((sigmas[1:] > sigmas[:-1]).all()), sigmas[-3:].tolist()
    assert float(sigmas[-1]) == float(sigmas.max()) > 1e3


def test_bad_inputs(tmp_path):
    denoiser, loss_fn, _ = _objective("eps")
    sigma, noise = loss_fn.draw(4, (1, 8, 8), generator=torch.Generator().manual_seed(0))
    labels = torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match="do not match"):
        loss_fn(denoiser, torch.zeros(2, 1, 8, 8), {"y": labels}, sigma=sigma, noise=noise)
    with pytest.raises(ValueError, match="must be batched"):
        loss_fn(denoiser, torch.zeros(4), {"y": labels}, sigma=sigma, noise=noise)
    with pytest.raises(ValueError, match="valid: eps, v, edm, flow"):
        build_denoiser(torch.nn.Identity(), ObjectiveConfig(kind="x1"))
    with pytest.raises(ValueError, match="valid: eps, v, edm, flow"):
        build_loss(torch.nn.Identity(), ObjectiveConfig(kind="x1"))
    with pytest.raises(ValueError, match="objective.offset_noise must be >= 0"):
        build_config("diffusion", None, ["objective.offset_noise=-0.1"])
    with pytest.raises(ValueError, match="zero_terminal_snr applies to the discrete eps / v"):
        build_config("diffusion", None, ["objective.zero_terminal_snr=true"])  # edm
    # labels: the null (unconditional) class is not a training label; a class-conditional
    # model needs labels
    x = torch.zeros(8, 1, 8, 8)
    null = ImageTensorDataset(x, torch.tensor([0, 1, 10, 2, 3, 4, 5, 6]))
    with pytest.raises(ValueError, match="has label 10.*CFG null class 10"):
        Trainer(tiny_config(tmp_path / "a"), dataset=null)
    with pytest.raises(ValueError, match="has no class labels"):
        Trainer(tiny_config(tmp_path / "b"), dataset=ImageTensorDataset(x))
