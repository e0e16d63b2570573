"""Config: YAML round trip, overrides, and errors that name the key."""

from __future__ import annotations

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
        ("optim.lrr=1", "optim.lrr: unknown key; valid keys: lr,"),
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
