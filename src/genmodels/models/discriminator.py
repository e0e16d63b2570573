"""PatchGAN discriminator (Isola et al. 2017, pix2pix) as used by taming-transformers' VQGAN.

:class:`NLayerDiscriminator` keeps taming's parameter names (``main.N.weight``) so the
``loss.discriminator.*`` weights of a taming checkpoint load into it. Layout for n_layers=3:

    conv4x4/2 (in -> ndf), LReLU(0.2)
    [conv4x4/2 (ndf*m_prev -> ndf*m), norm, LReLU] for m = min(2^n, 8), n = 1..n_layers-1
    conv4x4/1 (-> ndf*min(2^n_layers, 8)), norm, LReLU
    conv4x4/1 (-> 1)                                        # one logit per patch

With BatchNorm the convolutions before a norm have no bias; with ActNorm they do (taming).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["ActNorm", "NLayerDiscriminator", "weights_init"]


class ActNorm(nn.Module):
    """Per-channel affine ``scale * (x + loc)`` initialised from the first training batch.

    Glow's activation normalisation (Kingma & Dhariwal 2018): on the first forward in training
    mode, loc = -mean and scale = 1 / (std + 1e-6) per channel (unbiased std, as taming).
    """

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(1, num_features, 1, 1))
        self.scale = nn.Parameter(torch.ones(1, num_features, 1, 1))
        self.register_buffer("initialized", torch.tensor(0, dtype=torch.uint8))

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        flat = x.transpose(0, 1).reshape(x.shape[1], -1).float()  # (C, B*H*W)
        self.loc.copy_(-flat.mean(1).view(1, -1, 1, 1))
        self.scale.copy_(1 / (flat.std(1).view(1, -1, 1, 1) + 1e-6))
        self.initialized.fill_(1)

    def forward(self, x: Tensor) -> Tensor:
        if self.training and int(self.initialized) == 0:
            self.initialize(x)
        return self.scale * (x + self.loc)


def weights_init(m: nn.Module) -> None:
    """taming's init: convolutions N(0, 0.02); BatchNorm weight N(1, 0.02), bias 0."""
    if isinstance(m, nn.Conv2d):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


class NLayerDiscriminator(nn.Module):
    """Images (B, input_nc, H, W) -> patch logits (B, 1, H', W')."""

    def __init__(
        self, input_nc: int = 3, ndf: int = 64, n_layers: int = 3, use_actnorm: bool = False
    ) -> None:
        super().__init__()
        if input_nc < 1 or ndf < 1 or n_layers < 1:
            raise ValueError(
                f"input_nc, ndf and n_layers must be >= 1, got {input_nc}, {ndf}, {n_layers}"
            )
        self.input_nc = input_nc
        norm = ActNorm if use_actnorm else nn.BatchNorm2d
        bias = use_actnorm
        layers: list[nn.Module] = [
            nn.Conv2d(input_nc, ndf, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2, True),
        ]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers += [
                nn.Conv2d(ndf * prev, ndf * mult, 4, stride=stride, padding=1, bias=bias),
                norm(ndf * mult),
                nn.LeakyReLU(0.2, True),
            ]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1))
        self.main = nn.Sequential(*layers)
        self.apply(weights_init)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.input_nc:
            raise ValueError(
                f"expected images of shape (B, {self.input_nc}, H, W), got {tuple(x.shape)}"
            )
        return self.main(x)
