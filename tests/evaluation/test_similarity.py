"""SSIM and PSNR per image: analytic values (skimage's ``structural_similarity`` with
``gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1`` agrees to 1e-7;
checked by hand, not a test dependency)."""

from __future__ import annotations

import math

import pytest
import torch

from genmodels.evaluation.similarity import psnr_per_image, ssim_per_image


def test_identical_images() -> None:
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(ssim_per_image(x, x), torch.ones(3))
    assert psnr_per_image(x, x).tolist() == [math.inf] * 3


def test_constant_images_have_closed_forms() -> None:
    a, b = torch.full((1, 1, 12, 12), 0.25), torch.full((1, 1, 12, 12), 0.75)
    # no variance: SSIM is the luminance term (2 mu_a mu_b + C1) / (mu_a^2 + mu_b^2 + C1)
    c1 = 0.01**2
    expected = (2 * 0.25 * 0.75 + c1) / (0.25**2 + 0.75**2 + c1)
    assert ssim_per_image(a, b).item() == pytest.approx(expected, rel=1e-5)
    assert psnr_per_image(a, b).item() == pytest.approx(-10 * math.log10(0.25), rel=1e-6)


def test_more_noise_is_less_similar_and_small_images_work() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 1, 8, 8, generator=g)  # 8x8: the window shrinks to 7
    noise = torch.randn(2, 1, 8, 8, generator=g)
    near, far = (x + 0.05 * noise).clamp(0, 1), (x + 0.3 * noise).clamp(0, 1)
    assert (ssim_per_image(x, near) > ssim_per_image(x, far)).all()
    assert (psnr_per_image(x, near) > psnr_per_image(x, far)).all()
    with pytest.raises(ValueError, match="one shape"):
        ssim_per_image(x, x[:1])
