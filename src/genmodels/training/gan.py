"""One autoencoder + PatchGAN step (taming's two optimiser indices, in order), shared by the
KL autoencoder and the VQGAN:

1. autoencoder: loss = reconstruction + regulariser (+ adaptive-weighted GAN term once it is
   on); its optimiser steps on the encoder / decoder / codebook;
2. discriminator (once the GAN is on): hinge / vanilla loss of D(x) vs D(x_rec.detach()); its
   optimiser steps on the discriminator.

Gradients are averaged over DDP ranks by hand (``average_gradients``): the discriminator is
called several times a step, which DDP's wrapper does not allow.
"""

from __future__ import annotations

import contextlib

from torch import Tensor

from .autoencoder_loss import AutoencoderLoss
from .distributed import DistInfo, average_gradients
from .optim import OptimizerStep
from .regularizers import Regularization

__all__ = ["gan_step"]


def gan_step(
    loss_fn: AutoencoderLoss,
    opt_g: OptimizerStep,
    opt_d: OptimizerStep,
    x: Tensor,
    x_rec: Tensor,
    reg: Regularization,
    step: int,
    last_layer: Tensor,
    dist: DistInfo,
    amp: contextlib.AbstractContextManager,
) -> tuple[Tensor, dict[str, float]]:
    """Both optimiser steps of training step ``step``; returns the autoencoder loss and the
    logs (reconstruction, regulariser, GAN terms, LR, gradient norm)."""
    gan = loss_fn.gan_active(step)
    loss, logs = loss_fn.generator_loss(x, x_rec, reg, step, last_layer if gan else None)
    opt_g.backward(loss)
    average_gradients(opt_g.params(), dist)
    logs |= opt_g.step()
    if gan:
        opt_d.optimizer.zero_grad(set_to_none=True)  # drop what the generator pass left
        with amp:
            d_loss, d_logs = loss_fn.discriminator_loss(x, x_rec.detach(), step)
        opt_d.backward(d_loss)
        average_gradients(opt_d.params(), dist)
        opt_d.step()
        logs |= d_logs
    return loss.detach(), logs
