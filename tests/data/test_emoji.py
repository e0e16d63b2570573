"""Emoji dataset: rendering from the Noto font, captions, and the missing-font message."""

from __future__ import annotations

import os

import pytest
import torch

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
    assert ds.captions[:2] == ["grinning face", "grinning face with big eyes"]  # Unicode order
    assert ds.labels.tolist() == [0] * 6 and ds.class_names[0] == "Smileys & Emotion"
    assert float(ds.images[:3, :, 0, 0].min()) > 0.9  # round faces: white in the corner
    assert float(ds.images.min()) < -0.5  # and coloured glyph pixels
    cached = emoji_data.load_emoji_dataset(32, limit=6, cache_dir=tmp_path)
    assert (cached.images == ds.images).all() and cached.captions == ds.captions
    assert torch.equal(cached.labels, ds.labels)
    with pytest.raises(ValueError, match="32 or 64"):
        emoji_data.load_emoji_dataset(48)


def test_bundled_unicode_groups():
    groups = emoji_data.emoji_groups()
    names = [name for name, _ in groups]
    assert names == [
        "Smileys & Emotion",
        "People & Body",
        "Animals & Nature",
        "Food & Drink",
        "Travel & Places",
        "Activities",
        "Objects",
        "Symbols",
        "Flags",
    ]  # "Component" has no fully-qualified emoji
    by_char = {c: name for name, chars in groups for c in chars}
    assert len(by_char) == sum(len(chars) for _, chars in groups) > 3600  # Unicode 15.0: 3655
    assert by_char["\U0001f600"] == "Smileys & Emotion"  # grinning face
    assert by_char["\U0001f34c"] == "Food & Drink"  # banana
    assert by_char["\u2764\ufe0f"] == "Smileys & Emotion"  # red heart, with its VS16
    assert by_char["\U0001f1ef\U0001f1f5"] == "Flags"  # Japan


def test_emoji_names_are_captions_with_group_labels():
    pytest.importorskip("emoji")
    names = emoji_data._emoji_names()
    assert names[0] == ("\U0001f600", "grinning face", 0)
    assert {g for _, _, g in names} == set(range(9))
    assert [g for _, _, g in names] == sorted(g for _, _, g in names)  # grouped


def test_parse_emoji_test_and_write_the_table(tmp_path, monkeypatch):
    text = """# Version: 15.0
# group: Smileys & Emotion
# subgroup: face-smiling
1F600                                                  ; fully-qualified     # x E1.0 grinning face
263A FE0F                                              ; fully-qualified     # x E0.6 smiling face
263A                                                   ; unqualified         # x E0.6 smiling face
# group: Component
1F3FB                                                  ; component           # x E1.0 skin tone
# group: Flags
1F1EF 1F1F5                                            ; fully-qualified     # x E0.6 flag: Japan
"""
    groups = emoji_data.parse_emoji_test(text)
    assert groups == [
        ("Smileys & Emotion", ["\U0001f600", "\u263a\ufe0f"]),
        ("Flags", ["\U0001f1ef\U0001f1f5"]),
    ]
    src = tmp_path / "emoji-test.txt"
    src.write_text(text)
    table = emoji_data.write_group_table(src, tmp_path / "groups.json.gz")
    monkeypatch.setattr(emoji_data, "GROUP_TABLE", table)
    assert emoji_data.emoji_groups() == groups
