"""Config: YAML round trip, overrides, and errors that name the key."""

from __future__ import annotations

from dataclasses import replace

import pytest

from genmodels.cli.train import register, run
from genmodels.configs.train import TRAIN_PRESETS, get_train_config
from genmodels.training.config import TrainConfig, dump_config, load_config


def test_yaml_round_trip_of_every_preset(tmp_path):
    for name, cfg in TRAIN_PRESETS.items():
        path = tmp_path / f"{name}.yaml"
        dump_config(cfg, path)
        assert load_config(path) == cfg


def test_partial_file_and_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("optim:\n  lr: 3.0e-4\nmodel:\n  channel_mult: [1, 2, 2]\n")
    cfg = load_config(path, ["steps=7", "optim.lr=1e-4", "optim.betas=[0.9, 0.99]"])
    assert cfg.steps == 7 and cfg.optim.lr == 1e-4  # "1e-4" is a string to YAML 1.1
    assert cfg.optim.betas == (0.9, 0.99)
    assert cfg.model.channel_mult == (1, 2, 2)  # lists become the declared tuples
    assert cfg.data == TrainConfig().data  # untouched sections keep their defaults


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lrr=1", "optim.lrr: unknown key; valid keys: name, lr,"),
        ("optim.lr=fast", "optim.lr: expected a number"),
        ("steps=1.5", "steps: expected an integer"),
        ("channels_last=1", "channels_last: expected true/false"),
        ("precision=fp8", "precision: 'fp8' is not one of ['fp32', 'bf16', 'fp16']"),
        ("model.channel_mult=3", "model.channel_mult: expected a list"),
        ("data.crop=corner", "data.crop: 'corner' is not one of"),
        ("nonsense", "must look like key=value"),
        ("steps=0", "steps must be >= 1"),
    ],
)
def test_bad_config_names_the_key(override, message):
    with pytest.raises(ValueError, match=None) as info:
        load_config(None, [override])
    assert message in str(info.value)


def test_unknown_preset():
    with pytest.raises(ValueError, match="valid names"):
        get_train_config("nope")


def test_cli_print_config(tmp_path, capsys):
    import argparse

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train", "--preset", "digits-demo", "steps=3", "--print-config"])
    assert run(args) == 0
    text = capsys.readouterr().out
    path = tmp_path / "c.yaml"
    path.write_text(text)
    assert load_config(path).steps == 3
    assert load_config(path).model == get_train_config("digits-demo").model


def test_file_errors_name_the_key_or_file(tmp_path):
    cases = {
        "stepz: 3\n": "stepz: unknown key; valid keys: model, data,",
        'steps: "abc"\n': "steps: expected an integer, got 'abc'",
        "optim:\n  lrr: 1\n": "optim.lrr: unknown key",
        "optim: 3\n": "optim: expected a mapping",
        "steps: [\n": "bad.yaml: not valid YAML",
        "- 1\n": "expected a mapping at the top level",
    }
    for text, message in cases.items():
        path = tmp_path / "bad.yaml"
        path.write_text(text)
        with pytest.raises(ValueError) as info:
            load_config(path)
        assert message in str(info.value), (text, str(info.value))
    with pytest.raises(ValueError, match="nope.yaml does not exist"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("log_every=0", "log_every must be >= 1"),
        ("keep_last=-1", "keep_last must be >= 0"),
        ("data.num_workers=-2", "data.num_workers must be >= 0"),
        ("data.batch_size=0", "data.batch_size must be >= 1"),
        ("sample_steps=0", "sample_steps must be >= 1"),
        ("optim.lr=0", "optim.lr must be > 0"),
        ("optim.name=sgd", "optim.name: 'sgd' is not one of ['adamw', 'adamw8bit']"),
    ],
)
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ValueError) as info:
        load_config(None, [override])
    assert message in str(info.value)


def test_model_from_a_unet_preset(tmp_path):
    from genmodels.configs.unet import get_unet_config

    small = get_unet_config("small")
    path = tmp_path / "run.yaml"
    path.write_text("model: small\n")
    assert load_config(path).model == small
    path.write_text("model:\n  preset: small\n  num_classes: 11\n")
    assert load_config(path).model == replace(small, num_classes=11)
    # overrides: the preset replaces the whole section, later model.* keys change it
    cfg = load_config(None, ["model.preset=small", "model.dropout=0.0"])
    assert cfg.model == replace(small, dropout=0.0)
    assert load_config(None, ["model=tiny"]).model == get_unet_config("tiny")
    with pytest.raises(ValueError, match="model.preset: unknown UNet preset 'big'; valid names"):
        path.write_text("model:\n  preset: big\n")
        load_config(path)
