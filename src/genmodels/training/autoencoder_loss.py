"""Autoencoder training loss with a PatchGAN: VQGAN (Esser et al. 2021, eq. 4-7; taming's
``VQLPIPSWithDiscriminator``) and the KL autoencoder of latent diffusion (ldm's
``LPIPSWithDiscriminator``), which differ only in the regulariser (``regularizers.py``).

Generator (autoencoder) step:

    L_rec  = w_pix |x - x_rec| + w_l2 (x - x_rec)^2 + w_p LPIPS(x, x_rec)      (mean)
    L_G    = -mean D(x_rec)
    lambda = ||grad_L L_rec|| / (||grad_L L_G|| + 1e-4), clamped to [0, 1e4], times disc_weight
             (L = the decoder's last layer, eq. 7)
    loss   = L_rec + lambda * f(step) * L_G + R     (R: the regulariser's weighted term)

Discriminator step: f(step) * hinge (or vanilla) loss of D(x) vs D(x_rec.detach()), where
f(step) = disc_factor from ``disc_start`` on and 0 before (taming's ``adopt_weight``).

The perceptual term needs LPIPS weights (VGG16 features + linear heads) from a local file;
without one it is switched off with a warning. Nothing is downloaded.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genmodels.models.discriminator import NLayerDiscriminator

from .regularizers import Regularization

__all__ = [
    "AutoencoderLossConfig",
    "AutoencoderLoss",
    "adopt_weight",
    "adaptive_weight",
    "hinge_d_loss",
    "vanilla_d_loss",
    "DISC_LOSSES",
    "LPIPS",
    "load_lpips",
]

# VGG16 ``features`` (torchvision numbering): conv widths, "M" = 2x2 max-pool.
_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
_SLICE_ENDS = (4, 9, 16, 23, 30)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 (exclusive)


class LPIPS(nn.Module):
    """LPIPS distance (Zhang et al. 2018) with VGG16; taming's module layout and key names.

    Keys: ``net.slice{1..5}.{i}.weight/bias`` (VGG16 ``features`` index i) and
    ``lin{0..4}.model.1.weight`` (1x1 heads). Inputs in [-1, 1], 1 or 3 channels (grey is
    repeated to RGB). Returns (B, 1, 1, 1).
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer(
            "shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), False
        )
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), False)
        layers: list[nn.Module] = []
        c_in = 3
        for v in _VGG16:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c_in, v, 3, padding=1), nn.ReLU()]
                c_in = v
        self.net = nn.Module()
        start = 0
        for i, end in enumerate(_SLICE_ENDS):
            block = nn.Sequential()
            for j in range(start, end):
                block.add_module(str(j), layers[j])
            setattr(self.net, f"slice{i + 1}", block)
            start = end
        for i, ch in enumerate((64, 128, 256, 512, 512)):
            setattr(self, f"lin{i}", nn.Module())
            getattr(self, f"lin{i}").model = nn.Sequential(
                nn.Dropout(), nn.Conv2d(ch, 1, 1, bias=False)
            )

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        if x.shape[1] == 1:
            x, y = x.repeat(1, 3, 1, 1), y.repeat(1, 3, 1, 1)
        h0, h1 = (x - self.shift) / self.scale, (y - self.shift) / self.scale
        total = x.new_zeros(x.shape[0], 1, 1, 1)
        for i in range(5):
            block = getattr(self.net, f"slice{i + 1}")
            h0, h1 = block(h0), block(h1)
            f0 = h0 / (h0.square().sum(1, keepdim=True).sqrt() + 1e-10)  # unit channel norm
            f1 = h1 / (h1.square().sum(1, keepdim=True).sqrt() + 1e-10)
            d = getattr(self, f"lin{i}").model((f0 - f1).square())  # (B, 1, h, w)
            total = total + d.mean((2, 3), keepdim=True)
        return total


def load_lpips(path: str | Path) -> LPIPS:
    """LPIPS from a local ``.safetensors`` / ``.pt`` file in taming's layout.

    Prefixes ``loss.perceptual_loss.`` / ``perceptual_loss.`` are stripped; keys must match.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"LPIPS weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd = load_file(str(path))
    else:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    for prefix in ("loss.perceptual_loss.", "perceptual_loss."):
        if any(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    model = LPIPS()
    own = set(model.state_dict())
    sd = {k: v for k, v in sd.items() if k not in ("scaling_layer.shift", "scaling_layer.scale")}
    if set(sd) != own:
        raise ValueError(
            f"{path}: not LPIPS weights in taming's layout; missing {sorted(own - set(sd))[:5]}, "
            f"unexpected {sorted(set(sd) - own)[:5]}"
        )
    model.load_state_dict(sd, strict=True)
    return model


def hinge_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """0.5 (mean relu(1 - D(x)) + mean relu(1 + D(x_rec)))."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def vanilla_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """0.5 (mean softplus(-D(x)) + mean softplus(D(x_rec))): the non-saturating GAN loss."""
    return 0.5 * (F.softplus(-logits_real).mean() + F.softplus(logits_fake).mean())


DISC_LOSSES = {"hinge": hinge_d_loss, "vanilla": vanilla_d_loss}


def adopt_weight(weight: float, step: int, threshold: int = 0, value: float = 0.0) -> float:
    """``weight`` from step ``threshold`` on, ``value`` before (the discriminator start)."""
    return value if step < threshold else weight


def adaptive_weight(
    nll_loss: Tensor, g_loss: Tensor, last_layer: Tensor, disc_weight: float = 1.0
) -> Tensor:
    """lambda = ||dL_rec/dW|| / (||dL_G/dW|| + 1e-4), clamped to [0, 1e4], detached (eq. 7)."""
    nll_grads = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)[0]
    g_grads = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    d_weight = torch.norm(nll_grads) / (torch.norm(g_grads) + 1e-4)
    return torch.clamp(d_weight, 0.0, 1e4).detach() * disc_weight


@dataclass
class AutoencoderLossConfig:
    """Weights of the reconstruction and GAN terms; names and defaults follow taming's loss
    config (the codebook / KL weight is the regulariser's)."""

    disc_start: int = 0
    pixelloss_weight: float = 1.0  # L1 weight (taming stores it but always uses 1)
    l2_weight: float = 0.0
    perceptual_weight: float = 1.0
    lpips_path: str | None = None  # local LPIPS weights; None -> perceptual term off
    disc_in_channels: int | None = None  # None: the images' channels
    disc_num_layers: int = 3
    disc_ndf: int = 64
    use_actnorm: bool = False
    disc_factor: float = 1.0
    disc_weight: float = 1.0
    disc_loss: str = "hinge"

    def __post_init__(self) -> None:
        if self.disc_loss not in DISC_LOSSES:
            raise ValueError(f"unknown disc_loss {self.disc_loss!r}; valid: {sorted(DISC_LOSSES)}")
        for name in ("pixelloss_weight", "l2_weight", "perceptual_weight", "disc_factor"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


class AutoencoderLoss(nn.Module):
    """The two losses of an autoencoder + GAN step; owns the discriminator and the (frozen)
    LPIPS net."""

    def __init__(self, cfg: AutoencoderLossConfig) -> None:
        super().__init__()
        self.cfg = cfg
        if cfg.disc_in_channels is None:
            raise ValueError("AutoencoderLoss needs disc_in_channels (the images' channels)")
        self.discriminator = NLayerDiscriminator(
            cfg.disc_in_channels, cfg.disc_ndf, cfg.disc_num_layers, cfg.use_actnorm
        )
        self.disc_loss = DISC_LOSSES[cfg.disc_loss]
        self.perceptual_loss: LPIPS | None = None
        if cfg.perceptual_weight > 0:
            if cfg.lpips_path is None:
                warnings.warn(
                    "no local LPIPS weights (lpips_path): perceptual loss off", stacklevel=2
                )
            else:
                self.perceptual_loss = load_lpips(cfg.lpips_path).eval().requires_grad_(False)

    def reconstruction_loss(self, x: Tensor, x_rec: Tensor) -> Tensor:
        """Mean of w_pix |x - x_rec| + w_l2 (x - x_rec)^2 + w_p LPIPS, ()."""
        cfg = self.cfg
        diff = x.float() - x_rec.float()
        rec = cfg.pixelloss_weight * diff.abs()
        if cfg.l2_weight > 0:
            rec = rec + cfg.l2_weight * diff.square()
        if self.perceptual_loss is not None:
            rec = rec + cfg.perceptual_weight * self.perceptual_loss(x, x_rec).float()
        return rec.mean()

    def gan_active(self, step: int) -> bool:
        """Whether the GAN terms are on at ``step`` (``disc_factor`` > 0, from ``disc_start``)."""
        return adopt_weight(self.cfg.disc_factor, step, self.cfg.disc_start) > 0

    def generator_loss(
        self,
        x: Tensor,
        x_rec: Tensor,
        reg: Regularization,
        step: int,
        last_layer: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, float]]:
        """Autoencoder loss and its parts; ``last_layer`` is needed once the GAN term is on."""
        if x.shape != x_rec.shape:
            raise ValueError(f"x {tuple(x.shape)} and x_rec {tuple(x_rec.shape)} differ in shape")
        nll = self.reconstruction_loss(x, x_rec)
        loss = nll + reg.loss
        logs = {"rec_loss": nll.item()} | reg.logs
        if self.gan_active(step):
            if last_layer is None:
                raise ValueError("generator_loss needs last_layer once the discriminator is on")
            g_loss = -self.discriminator(x_rec).float().mean()
            d_weight = adaptive_weight(nll, g_loss, last_layer, self.cfg.disc_weight)
            loss = loss + d_weight * self.cfg.disc_factor * g_loss
            logs |= {"g_loss": g_loss.item(), "d_weight": d_weight.item()}
        return loss, logs

    def discriminator_loss(
        self, x: Tensor, x_rec: Tensor, step: int
    ) -> tuple[Tensor, dict[str, float]]:
        """Discriminator loss on real x and detached reconstructions (zero before disc_start)."""
        disc_factor = adopt_weight(self.cfg.disc_factor, step, self.cfg.disc_start)
        logits_real = self.discriminator(x.detach()).float()
        logits_fake = self.discriminator(x_rec.detach()).float()
        d_loss = disc_factor * self.disc_loss(logits_real, logits_fake)
        logs = {
            "d_loss": d_loss.item(),
            "logits_real": logits_real.mean().item(),
            "logits_fake": logits_fake.mean().item(),
        }
        return d_loss, logs
