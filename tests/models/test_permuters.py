"""Code-order permuters: bijections, hand-worked orders, taming's buffer names."""

import numpy as np
import pytest
import torch

from genmodels.models.permuters import (
    PERMUTERS,
    make_permuter,
    morton_code,
    spiral_in_order,
    z_curve_order,
)


@pytest.mark.parametrize("name", PERMUTERS)
@pytest.mark.parametrize("hw", [(4, 4), (3, 5), (1, 7)])
def test_permuters_are_bijections(name, hw):
    h, w = hw
    p = make_permuter(name, h, w)
    x = torch.arange(2 * h * w).view(2, h * w)
    y = p(x)
    assert sorted(y[0].tolist()) == list(range(h * w))
    assert torch.equal(p(y, reverse=True), x)
    z = torch.randn(2, h * w, 3)  # trailing feature dims ride along
    assert torch.equal(p(p(z), reverse=True), z)


def test_morton_code_hand_example():
    # i = 3 = 0b011 -> odd bits 1, 3; j = 5 = 0b101 -> even bits 0, 4: 1 + 2 + 8 + 16
    assert morton_code(3, 5) == 27
    assert [morton_code(i, j) for i in range(2) for j in range(2)] == [0, 1, 2, 3]


def test_z_curve_4x4_hand_example():
    # 2x2 blocks in Z order, each block itself in Z order (raster index = 4 * row + col)
    expected = [0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15]
    assert z_curve_order(4, 4) == expected
    p = make_permuter("z_curve", 4, 4)
    assert p(torch.arange(16)[None])[0].tolist() == expected


def test_spiral_orders_hand_example():
    assert spiral_in_order(3, 3) == [0, 1, 2, 5, 8, 7, 6, 3, 4]
    assert spiral_in_order(2, 3) == [0, 1, 2, 5, 4, 3]
    out = make_permuter("spiral_out", 3, 3)
    assert out(torch.arange(9)[None])[0].tolist() == [4, 3, 6, 7, 8, 5, 2, 1, 0]


def test_random_permuter_matches_taming_seed():
    p = make_permuter("random", 4, 4)
    expected = np.random.RandomState(1).permutation(16).tolist()
    assert p.forward_shuffle_idx.tolist() == expected


def test_state_dict_uses_taming_buffer_names():
    p = make_permuter("z_curve", 4, 4)
    assert set(p.state_dict()) == {"forward_shuffle_idx", "backward_shuffle_idx"}
    q = make_permuter("random", 4, 4, seed=3)
    q.load_state_dict(p.state_dict(), strict=True)
    assert q.forward_shuffle_idx.tolist() == z_curve_order(4, 4)
    assert make_permuter("identity", 4, 4).state_dict() == {}


def test_bad_inputs():
    with pytest.raises(ValueError, match="valid names"):
        make_permuter("hilbert", 4, 4)
    with pytest.raises(ValueError, match="positive"):
        make_permuter("z_curve", 0, 4)
    with pytest.raises(ValueError, match=r"\(B, 16"):
        make_permuter("z_curve", 4, 4)(torch.zeros(2, 15))
