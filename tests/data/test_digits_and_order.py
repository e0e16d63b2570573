"""Built-in digits and the deterministic batch order."""

from __future__ import annotations

import pytest
import torch

from genmodels.data.builtin import build_dataset
from genmodels.data.digits import load_digits_arrays, load_digits_tensor, to_native
from genmodels.data.tensor_dataset import ImageTensorDataset, batch_indices


def test_digits_shapes_ranges_and_round_trip():
    raw, labels = load_digits_arrays()
    assert raw.shape == (1797, 8, 8) and float(raw.max()) == 16.0
    x, y = load_digits_tensor(16)
    assert x.shape == (1797, 1, 16, 16) and torch.equal(y, labels)
    assert float(x.min()) >= -1 and float(x.max()) <= 1
    x8, _ = load_digits_tensor(8)
    torch.testing.assert_close(to_native(x8), raw.flatten(1))  # 8 px: exact inverse
    with pytest.raises(ValueError, match=">= 8"):
        load_digits_tensor(4)
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        to_native(torch.zeros(2, 3, 8, 8))


def test_build_dataset_by_name():
    ds = build_dataset("digits", size=8)
    assert len(ds) == 1797 and ds.class_names[3] == "3"
    image, label = ds[5]
    assert image.shape == (1, 8, 8) and label == 5
    with pytest.raises(ValueError, match="valid: digits, emoji, folder"):
        build_dataset("cifar", size=8)
    with pytest.raises(ValueError, match="data.path"):
        build_dataset("folder", size=8)


def test_batch_order_is_a_pure_function_of_k():
    n, b = 50, 8
    first_epoch = torch.cat([batch_indices(n, b, seed=1, k=k) for k in range(6)])
    assert len(set(first_epoch.tolist())) == 48  # one permutation, remainder dropped
    assert torch.equal(batch_indices(n, b, 1, 7), batch_indices(n, b, 1, 7))
    assert not torch.equal(batch_indices(n, b, 1, 0), batch_indices(n, b, 1, 6))  # next epoch
    assert not torch.equal(batch_indices(n, b, 1, 0), batch_indices(n, b, 2, 0))
    with pytest.raises(ValueError, match="exceeds the dataset size"):
        batch_indices(4, 8, 0, 0)


def test_tensor_dataset_validates():
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        ImageTensorDataset(torch.zeros(3, 8, 8))
    with pytest.raises(ValueError, match=r"labels must have shape \(3,\)"):
        ImageTensorDataset(torch.zeros(3, 1, 8, 8), torch.zeros(2, dtype=torch.long))
