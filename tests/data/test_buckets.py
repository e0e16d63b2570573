"""Aspect-ratio buckets, bucket batches, crops with their SDXL crop record, tag shuffling and
kohya repeat folders."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from genmodels.data.buckets import assign_bucket, bucket_batches, crop_to_bucket, make_buckets
from genmodels.data.captions import shuffle_tags
from genmodels.data.folder import kohya_repeats


def test_buckets_are_equal_area_multiples_of_64_in_both_orientations() -> None:
    buckets = make_buckets(512)  # kohya's defaults: sides 256..1024
    assert (512, 512) in buckets and (768, 320) in buckets and (320, 768) in buckets
    for w, h in buckets:
        assert w % 64 == 0 and h % 64 == 0 and 256 <= min(w, h) and max(w, h) <= 1024
        assert w * h <= 512 * 512 and w * h > 512 * 512 - 64 * max(w, h)  # the largest fitting
        assert (h, w) in buckets
    # kohya's make_bucket_resolutions(512) gives the same 17 buckets
    assert len(buckets) == 17 and (704, 320) in buckets and (640, 384) in buckets
    assert min(min(b) for b in make_buckets(1024)) == 512
    with pytest.raises(ValueError, match="multiples of 64"):
        make_buckets(500)


def test_assignment_picks_the_nearest_aspect_ratio() -> None:
    buckets = make_buckets(512)
    assert assign_bucket((1000, 1000), buckets) == (512, 512)
    assert assign_bucket((1920, 1080), buckets) == (640, 384)  # 1.78 -> 1.67, not 2.2
    assert assign_bucket((1080, 1920), buckets) == (384, 640)
    assert assign_bucket((5000, 100), buckets) == (1024, 256)  # the widest


@pytest.mark.parametrize("batch", [1, 3, 4])
def test_every_item_is_in_a_batch_of_one_bucket(batch: int) -> None:
    gen = torch.Generator().manual_seed(0)
    buckets_of = torch.randint(0, 5, (37,), generator=gen).tolist()
    for epoch in range(3):
        batches = bucket_batches(buckets_of, batch, seed=7, epoch=epoch)
        assert all(len(b) == batch and len({buckets_of[i] for i in b}) == 1 for b in batches)
        assert {i for b in batches for i in b} == set(range(37))
        n = sum(-(-buckets_of.count(k) // batch) for k in set(buckets_of))
        assert len(batches) == n
        assert batches == bucket_batches(buckets_of, batch, seed=7, epoch=epoch)  # pure
    assert bucket_batches(buckets_of, batch, 7, 0) != bucket_batches(buckets_of, batch, 7, 1)


def test_crop_records_the_sdxl_micro_conditioning() -> None:
    img = Image.new("RGB", (300, 200))  # (w, h)
    x, info = crop_to_bucket(img, (128, 64), "center")
    # scale = max(128/300, 64/200) = 0.4267 -> 128 x 85, centre crop of height 64: top 10
    assert x.shape == (3, 64, 128)
    assert info.original_size == (200, 300) and info.target_size == (64, 128)
    assert info.crop_top_left == (10, 0) and not info.flipped
    tops = {crop_to_bucket(img, (128, 64), "random", seed=s)[1].crop_top_left for s in range(20)}
    assert len(tops) > 3 and all(0 <= t <= 21 and left == 0 for t, left in tops)
    flipped = [crop_to_bucket(img, (64, 64), "center", True, seed=s)[1].flipped for s in range(40)]
    assert 5 < sum(flipped) < 35


def test_shuffle_tags_keeps_the_first_tokens() -> None:
    caption = "sks, dog, grass, sunny, photo"
    out = {shuffle_tags(caption, keep_tokens=1, seed=s) for s in range(30)}
    assert len(out) > 5 and all(o.startswith("sks, ") for o in out)
    assert all(sorted(o.split(", ")) == sorted(caption.split(", ")) for o in out)
    assert shuffle_tags("one tag", 0, 1) == "one tag"


def test_kohya_repeat_folders(tmp_path: Path) -> None:
    assert kohya_repeats(tmp_path / "10_sks dog" / "a.png", tmp_path) == 10
    assert kohya_repeats(tmp_path / "3_x" / "sub" / "a.png", tmp_path) == 3
    assert kohya_repeats(tmp_path / "dogs" / "a.png", tmp_path) == 1
    assert kohya_repeats(tmp_path / "a.png", tmp_path) == 1
