"""Autoencoder (VQGAN) loss terms against hand-computed values with the codebook regulariser;
PatchGAN layout; LPIPS loading."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from genmodels.models.discriminator import ActNorm, NLayerDiscriminator
from genmodels.training.autoencoder_loss import (
    LPIPS,
    AutoencoderLoss,
    AutoencoderLossConfig,
    adaptive_weight,
    adopt_weight,
    hinge_d_loss,
    load_lpips,
    vanilla_d_loss,
)
from genmodels.training.regularizers import vq_regularization


def test_hinge_and_vanilla_losses_by_hand() -> None:
    real, fake = torch.tensor([0.5, 2.0, -1.0]), torch.tensor([-2.0, 0.3])
    # relu(1 - real) = [0.5, 0, 2] -> 5/6 ; relu(1 + fake) = [0, 1.3] -> 0.65
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.5 * (5 / 6 + 0.65))
    sp = lambda v: math.log1p(math.exp(v))  # noqa: E731
    expected = 0.5 * ((sp(-0.5) + sp(-2.0) + sp(1.0)) / 3 + (sp(-2.0) + sp(0.3)) / 2)
    assert vanilla_d_loss(real, fake).item() == pytest.approx(expected, rel=1e-6)


def test_adopt_weight_and_adaptive_weight() -> None:
    assert adopt_weight(0.8, 99, threshold=100) == 0.0
    assert adopt_weight(0.8, 100, threshold=100) == 0.8
    w = torch.tensor([1.0, -2.0, 0.5], requires_grad=True)
    a, b = torch.tensor([3.0, 4.0, 0.0]), torch.tensor([0.0, 1.0, 0.0])
    nll, g = (a * w).sum(), (b * w).sum()  # gradients a and b: norms 5 and 1
    d = adaptive_weight(nll, g, w, disc_weight=0.5)
    assert d.item() == pytest.approx(5 / (1 + 1e-4) * 0.5)
    assert not d.requires_grad
    huge = adaptive_weight((a * w).sum(), (0 * w).sum(), w)  # ||grad G|| = 0 -> clamp at 1e4
    assert huge.item() == pytest.approx(1e4)


def _loss(**kw: object) -> AutoencoderLoss:
    cfg = AutoencoderLossConfig(
        perceptual_weight=0.0, disc_in_channels=1, disc_num_layers=2, disc_ndf=8, **kw
    )
    return AutoencoderLoss(cfg)


def test_generator_loss_by_hand() -> None:
    torch.manual_seed(0)
    loss_fn = _loss(disc_start=5, l2_weight=0.5, disc_weight=0.7)
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    w = torch.randn(1, 1, 16, 16, requires_grad=True)  # stands in for the decoder's last layer
    x_rec = torch.tanh(x * 0.5 + w)
    cb = torch.tensor(0.3)
    reg = vq_regularization(cb, 2.0)  # the codebook term with taming's codebook_weight 2
    diff = x - x_rec
    nll = (diff.abs() + 0.5 * diff.square()).mean()
    # before disc_start: reconstruction + codebook only
    assert not loss_fn.gan_active(4) and loss_fn.gan_active(5)
    loss, logs = loss_fn.generator_loss(x, x_rec, reg, step=4, last_layer=w)
    torch.testing.assert_close(loss, nll + 2.0 * cb)
    assert "g_loss" not in logs
    assert logs["codebook_loss"] == pytest.approx(0.3)  # logged unweighted
    assert logs["rec_loss"] == pytest.approx(nll.item())
    d_loss, _ = loss_fn.discriminator_loss(x, x_rec, step=4)
    assert d_loss.item() == 0.0
    # from disc_start on: + lambda * L_G with lambda from the gradient norms at w
    loss, logs = loss_fn.generator_loss(x, x_rec, reg, step=5, last_layer=w)
    g = -loss_fn.discriminator(x_rec).mean()
    gn = torch.autograd.grad(nll, w, retain_graph=True)[0].norm()
    gg = torch.autograd.grad(g, w, retain_graph=True)[0].norm()
    lam = (gn / (gg + 1e-4)).clamp(0, 1e4) * 0.7
    torch.testing.assert_close(loss, nll + 2.0 * cb + lam * g)
    assert logs["d_weight"] == pytest.approx(lam.item(), rel=1e-5)
    d_loss, _ = loss_fn.discriminator_loss(x, x_rec, step=5)
    d = loss_fn.discriminator
    torch.testing.assert_close(d_loss, hinge_d_loss(d(x), d(x_rec)))
    with pytest.raises(ValueError, match="needs last_layer"):
        loss_fn.generator_loss(x, x_rec, reg, step=5)


def test_discriminator_matches_taming_layout() -> None:
    d = NLayerDiscriminator()  # input_nc=3, ndf=64, n_layers=3, BatchNorm
    shapes = {k: tuple(v.shape) for k, v in d.state_dict().items()}
    assert shapes["main.0.weight"] == (64, 3, 4, 4) and "main.0.bias" in shapes
    assert shapes["main.2.weight"] == (128, 64, 4, 4) and "main.2.bias" not in shapes
    assert shapes["main.3.running_mean"] == (128,)
    assert shapes["main.8.weight"] == (512, 256, 4, 4)
    assert shapes["main.11.weight"] == (1, 512, 4, 4)
    assert d(torch.randn(1, 3, 64, 64)).shape == (1, 1, 6, 6)  # 64->32->16->8->7->6
    act = NLayerDiscriminator(1, 8, 2, use_actnorm=True)
    assert "main.2.bias" in act.state_dict() and "main.3.loc" in act.state_dict()
    with pytest.raises(ValueError, match=r"expected images of shape \(B, 1, H, W\)"):
        act(torch.randn(1, 3, 16, 16))


def test_actnorm_initialises_from_first_batch() -> None:
    norm = ActNorm(3)
    x = torch.randn(4, 3, 5, 5) * torch.tensor([2.0, 0.5, 3.0]).view(1, 3, 1, 1) + 1.0
    y = norm(x)
    torch.testing.assert_close(y.mean((0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        y.transpose(0, 1).reshape(3, -1).std(1), torch.ones(3), atol=1e-4, rtol=0
    )
    assert int(norm.initialized) == 1
    y2 = norm(x * 2)  # later batches reuse the statistics
    torch.testing.assert_close(y2, norm.scale * (x * 2 + norm.loc))


def _lpips_by_hand(sd: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
    convs = {int(k.split(".")[2]): k.rsplit(".", 1)[0] for k in sd if k.startswith("net.")}
    taps, total = {3, 8, 15, 22, 29}, 0.0
    h = [(x - shift) / scale, (y - shift) / scale]
    lin = 0
    for j in range(30):
        for i in range(2):
            if j in convs:
                h[i] = F.conv2d(h[i], sd[convs[j] + ".weight"], sd[convs[j] + ".bias"], padding=1)
            elif j in (4, 9, 16, 23):
                h[i] = F.max_pool2d(h[i], 2)
            else:
                h[i] = F.relu(h[i])
        if j in taps:
            f = [v / (v.pow(2).sum(1, keepdim=True).sqrt() + 1e-10) for v in h]
            d = F.conv2d((f[0] - f[1]) ** 2, sd[f"lin{lin}.model.1.weight"])
            total = total + d.mean((2, 3), keepdim=True)
            lin += 1
    return total


def test_lpips_loads_local_file_and_matches_hand_computation(tmp_path) -> None:  # noqa: ANN001
    g = torch.Generator().manual_seed(0)
    sd = {k: torch.randn(v.shape, generator=g) * 0.1 for k, v in LPIPS().state_dict().items()}
    sd = {k: v.abs() if k.startswith("lin") else v for k, v in sd.items()}
    path = tmp_path / "vgg_lpips.safetensors"
    save_file({f"loss.perceptual_loss.{k}": v for k, v in sd.items()}, str(path))
    lpips = load_lpips(path).eval()
    x, y = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    out = lpips(x, y)
    assert out.shape == (2, 1, 1, 1)
    torch.testing.assert_close(out, _lpips_by_hand(sd, x, y), rtol=1e-4, atol=1e-6)
    assert lpips(x, x).abs().max().item() == 0.0
    loss_cfg = AutoencoderLossConfig(
        lpips_path=str(path), perceptual_weight=0.5, disc_start=9, disc_in_channels=3
    )
    loss_fn = AutoencoderLoss(loss_cfg)
    expected = ((x - y).abs() + 0.5 * out).mean()
    torch.testing.assert_close(loss_fn.reconstruction_loss(x, y), expected)
    bad = tmp_path / "bad.safetensors"
    save_file({"foo": torch.zeros(1)}, str(bad))
    with pytest.raises(ValueError, match="not LPIPS weights"):
        load_lpips(bad)


def test_config_errors_and_missing_lpips_warning() -> None:
    with pytest.raises(ValueError, match="unknown disc_loss"):
        AutoencoderLossConfig(disc_loss="wgan")
    with pytest.raises(TypeError, match="codebook_weight"):  # now the regulariser's weight
        AutoencoderLossConfig(codebook_weight=1.0)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="needs disc_in_channels"):
        AutoencoderLoss(AutoencoderLossConfig(perceptual_weight=0.0))
    with pytest.warns(UserWarning, match="perceptual loss off"):
        loss_fn = AutoencoderLoss(AutoencoderLossConfig(disc_in_channels=1, disc_ndf=8))
    assert loss_fn.perceptual_loss is None
    with pytest.raises(ValueError, match="LPIPS weights file not found"):
        load_lpips("/nonexistent/vgg.pth")
