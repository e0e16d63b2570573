"""Emoji dataset: rendering from the Noto font, captions, and the missing-font message."""

from __future__ import annotations

import os

import pytest

from genmodels.data import emoji as emoji_data


def test_missing_font_names_the_install_command(tmp_path):
    with pytest.raises(ValueError, match="apt-get install fonts-noto-color-emoji"):
        emoji_data.find_emoji_font((str(tmp_path / "NotoColorEmoji.ttf"),))


@pytest.mark.skipif(
    not any(os.path.isfile(p) for p in emoji_data.FONT_PATHS), reason="font not installed"
)
def test_render_a_few(tmp_path):
    pytest.importorskip("emoji")
    ds = emoji_data.load_emoji_dataset(32, limit=6, cache_dir=tmp_path)
    assert ds.images.shape == (6, 3, 32, 32)
    assert ds.captions[0] == "1st place medal"
    assert float(ds.images[:3, :, 0, 0].min()) > 0.9  # medals: white background in the corner
    assert float(ds.images.min()) < -0.5  # and coloured glyph pixels
    cached = emoji_data.load_emoji_dataset(32, limit=6, cache_dir=tmp_path)
    assert (cached.images == ds.images).all() and cached.captions == ds.captions
    with pytest.raises(ValueError, match="32 or 64"):
        emoji_data.load_emoji_dataset(48)
