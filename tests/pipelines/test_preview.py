"""The latent -> RGB preview approximation: the linear map per family, None without factors,
and the grid / resize of ``preview_image``."""

from __future__ import annotations

import torch

from genmodels.pipelines.preview import LATENT_RGB_FACTORS, approximate_rgb, preview_image


def test_approximate_rgb_is_the_linear_map() -> None:
    latents = torch.zeros(2, 4, 3, 5)
    latents[0, 1] = 1.0  # channel 1 only: RGB = (row 1 + 1) / 2
    rgb = approximate_rgb(latents, "sd1")
    assert rgb.shape == (2, 3, 3, 5)
    want = (torch.tensor(LATENT_RGB_FACTORS["sd1"][1]) + 1) / 2
    torch.testing.assert_close(rgb[0, :, 1, 2], want)
    torch.testing.assert_close(rgb[1], torch.full((3, 3, 5), 0.5))  # zero latent: mid grey
    assert approximate_rgb(torch.full((1, 4, 2, 2), 100.0), "sdxl-base").max() == 1.0
    assert approximate_rgb(torch.zeros(1, 16, 2, 2), "sd1") is None  # another latent width
    assert approximate_rgb(torch.zeros(1, 4, 2, 2), "unknown") is None


def test_preview_image_resizes_and_grids() -> None:
    one = preview_image(torch.rand(1, 3, 4, 6), (24, 16))
    assert one.size == (24, 16)
    grid = preview_image(torch.rand(4, 3, 4, 4), (8, 8))
    assert grid.size == (16, 16)
