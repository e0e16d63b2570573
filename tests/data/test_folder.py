"""Image folders: recursion, classes, captions, transforms, corrupt-image skipping."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from genmodels.data.folder import ImageFolderDataset
from genmodels.data.transforms import load_rgb, transform_image


def _img(path, color, size=(12, 8), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)


def _tree(root):
    _img(root / "cats" / "a.png", (255, 0, 0))
    _img(root / "cats" / "deep" / "b.jpg", (0, 255, 0))
    _img(root / "dogs" / "c.webp", (0, 0, 255))
    (root / "cats" / "a.txt").write_text("a red cat\n")
    (root / "dogs" / "metadata.jsonl").write_text(
        json.dumps({"file_name": "c.webp", "text": "a blue dog"}) + "\n"
    )
    (root / "dogs" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    (root / "dogs" / "notes.md").write_text("ignored")


def test_recursive_classes_captions_and_corrupt_skip(tmp_path):
    _tree(tmp_path)
    with pytest.warns(UserWarning, match="skipping unreadable image .*broken.png"):
        ds = ImageFolderDataset(tmp_path, size=8)
    assert ds.skipped == 1 and len(ds) == 3
    assert ds.class_names == ["cats", "dogs"]
    assert ds.labels == [0, 0, 1]
    assert ds.captions == ["a red cat", "", "a blue dog"]
    image, label = ds[0]
    assert image.shape == (3, 8, 8) and label == 0
    torch.testing.assert_close(image[:, 4, 4], torch.tensor([1.0, -1.0, -1.0]))


def test_decode_failure_after_scan_uses_next_image(tmp_path):
    _img(tmp_path / "a.png", (0, 0, 0))
    _img(tmp_path / "b.png", (255, 255, 255))
    ds = ImageFolderDataset(tmp_path, size=4)
    assert ds.class_names is None and ds.labels == [-1, -1]
    (tmp_path / "a.png").write_bytes(b"garbage")  # broken after the scan
    with pytest.warns(UserWarning, match="a.png"):
        image, _ = ds[0]
    assert ds.skipped == 1 and float(image.min()) == 1.0  # b.png stood in


def test_empty_or_missing_folder(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        ImageFolderDataset(tmp_path / "nope", 8)
    (tmp_path / "x.txt").write_text("no images")
    with pytest.raises(ValueError, match="no readable images"):
        ImageFolderDataset(tmp_path, 8)


def test_transforms(tmp_path):
    arr = np.zeros((8, 16, 3), dtype=np.uint8)
    arr[:, :8] = 255  # left half white
    img = Image.fromarray(arr)
    centre = transform_image(img, 8, crop="center")
    assert centre.shape == (3, 8, 8)
    assert float(centre[0, 0, 0]) == 1.0 and float(centre[0, 0, -1]) == -1.0
    crops = {
        tuple(transform_image(img, 8, crop="random", seed=s)[0, 0].tolist()) for s in range(20)
    }
    assert len(crops) > 1  # random crops differ ...
    again = transform_image(img, 8, crop="random", flip=True, seed=3)
    torch.testing.assert_close(again, transform_image(img, 8, crop="random", flip=True, seed=3))
    flips = {float(transform_image(img, 8, flip=True, seed=s)[0, 0, 0]) for s in range(20)}
    assert flips == {1.0, -1.0}  # ... and so do flips, reproducibly per seed
    with pytest.raises(ValueError, match="valid: center, random"):
        transform_image(img, 8, crop="edge")
    # transparency is composited onto white
    _img(tmp_path / "t.png", (0, 0, 0, 0), mode="RGBA")
    assert load_rgb(str(tmp_path / "t.png")).getpixel((0, 0)) == (255, 255, 255)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ImageFolderDataset(tmp_path, 4)  # nothing corrupt: no warning


def test_skip_counter_counts_files_not_decode_attempts(tmp_path, monkeypatch):
    from PIL import Image

    from genmodels.data import folder as folder_mod

    for i in range(3):
        Image.new("RGB", (8, 8), (i * 80, 0, 0)).save(tmp_path / f"{i}.png")
    ds = folder_mod.ImageFolderDataset(tmp_path, size=8)
    real = folder_mod.load_rgb

    def flaky(path: str):  # 1.png passes verify() but fails to decode, every time
        if path.endswith("1.png"):
            raise OSError("broken data stream")
        return real(path)

    monkeypatch.setattr(folder_mod, "load_rgb", flaky)
    with pytest.warns(UserWarning, match="1.png"):
        for _ in range(5):
            ds[1]
    assert ds.skipped == 1
