"""Config: YAML round trip, overrides, one layout for every task (old keys refused naming the
new one), and errors that name the key."""

from __future__ import annotations

from dataclasses import replace

import pytest
import yaml

from genmodels.cli.train import register, run
from genmodels.configs.io import apply_overrides
from genmodels.training.presets import PRESETS, get_preset
from genmodels.training.task_configs import DiffusionRunConfig, dump_config, task_of
from genmodels.training.tasks import TASKS, build_config, load_config


def test_yaml_round_trip_of_every_preset(tmp_path):
    for name, cfg in PRESETS.items():  # every task's presets, the file naming its task
        path = tmp_path / f"{name}.yaml"
        dump_config(cfg, path)
        assert path.read_text().startswith(f"task: {task_of(cfg)}\n")
        assert load_config(path) == cfg
        assert build_config(task_of(cfg), path) == cfg
        assert build_config(task_of(cfg), preset=name) == cfg


def test_partial_file_and_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("optim:\n  lr: 3.0e-4\nmodel:\n  channel_mult: [1, 2, 2]\n")
    cfg = load_config(path, ["steps=7", "optim.lr=1e-4", "optim.betas=[0.9, 0.99]"])
    assert cfg.steps == 7 and cfg.optim.lr == 1e-4  # "1e-4" is a string to YAML 1.1
    assert cfg.optim.betas == (0.9, 0.99)
    assert cfg.model.channel_mult == (1, 2, 2)  # lists become the declared tuples
    assert cfg.data == DiffusionRunConfig().data  # untouched sections keep their defaults
    assert task_of(cfg) == "diffusion"  # a file without task: is a diffusion config


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
        build_config("diffusion", None, [override])
    assert message in str(info.value)


def test_unknown_preset():
    with pytest.raises(ValueError, match="valid names"):
        get_preset("nope")
    with pytest.raises(ValueError, match="valid names"):
        build_config("diffusion", preset="nope")
    with pytest.raises(ValueError, match="does not match the preset"):
        build_config("diffusion", preset="autoencoder-digits")


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
    assert load_config(path).model == get_preset("digits-demo").model


def test_file_errors_name_the_key_or_file(tmp_path):
    cases = {
        "stepz: 3\n": "stepz: unknown key; valid keys: data, optim, ema, steps,",
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
    path = tmp_path / "task.yaml"
    path.write_text("task: diffusion\nsteps: 3\n")
    with pytest.raises(ValueError, match="not a 'autoencoder' config"):
        build_config("autoencoder", path)
    path.write_text("task: painting\n")
    with pytest.raises(ValueError, match="task: unknown 'painting'"):
        load_config(path)


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
        ("optim.disc_lr=0", "optim.disc_lr must be > 0"),
    ],
)
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ValueError) as info:
        build_config("diffusion", None, [override])
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
    cfg = build_config("diffusion", None, ["model.preset=small", "model.dropout=0.0"])
    assert cfg.model == replace(small, dropout=0.0)
    assert build_config("diffusion", None, ["model=tiny"]).model == get_unet_config("tiny")
    with pytest.raises(ValueError, match="model.preset: unknown UNet preset 'big'; valid names"):
        path.write_text("model:\n  preset: big\n")
        load_config(path)


@pytest.mark.parametrize(
    ("task", "old", "named", "new"),
    [
        ("diffusion", "train.lr=2", "train.lr", "optim.lr"),
        ("diffusion", "train.steps=2", "train.steps", "steps"),
        ("autoencoder", "train.lr=2", "train.lr", "optim.lr"),
        ("autoencoder", "train.batch_size=2", "train.batch_size", "data.batch_size"),
        ("autoencoder", "train.steps=2", "train.steps", "steps"),
        ("autoencoder", "train.log_every=2", "train.log_every", "log_every"),
        ("autoencoder", "train.kl_weight=2", "train.kl_weight", "regularizer.weight"),
        ("autoencoder", "train.betas=[0.5, 0.9]", "train.betas", "optim.betas"),
        ("autoencoder", "train.disc_lr=2", "train.disc_lr", "optim.disc_lr"),
        ("autoencoder", "train.bf16=true", "train.bf16", "precision"),
        ("autoencoder", "train.loss.disc_start=2", "train.loss.disc_start", "loss.disc_start"),
        ("vqgan", "train.loss.codebook_weight=2", "train.loss.codebook_weight",
         "regularizer.weight"),
        ("vqgan", "loss.codebook_weight=2", "loss.codebook_weight", "regularizer.weight"),
        ("transformer", "gpt.n_layer=2", "gpt.n_layer", "model.n_layer"),
    ],
)  # fmt: skip
def test_keys_of_the_old_layouts_name_the_new_key(tmp_path, task, old, named, new):
    """One YAML layout for every task: a key of the per-task layouts before it is refused,
    in an override or a file, naming the key that replaced it."""
    message = f"{named}: this key moved in the one config layout of every task; use {new}"
    with pytest.raises(ValueError) as info:
        build_config(task, None, [old])
    assert message in str(info.value)
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump({"task": task, **apply_overrides({}, [old])}))
    with pytest.raises(ValueError) as info:
        build_config(task, path)
    assert f"{path}: {message}" in str(info.value)  # the file named too
    with pytest.raises(ValueError) as info:
        load_config(path)
    assert message in str(info.value)


def test_every_task_shares_the_run_settings():
    """The shared sections and run settings have the same keys and checks in every task."""
    for task in TASKS:
        cfg = build_config(task, None, ["steps=7", "optim.lr=1e-4", "data.batch_size=4",
                                        "seed=3", "keep_last=1", "optim.disc_lr=2e-4"])  # fmt: skip
        assert (cfg.steps, cfg.optim.lr, cfg.data.batch_size, cfg.seed) == (7, 1e-4, 4, 3)
        assert cfg.optim.disc_lr == 2e-4 and cfg.keep_last == 1
        with pytest.raises(ValueError, match="log_every must be >= 1"):
            build_config(task, None, ["log_every=0"])
        with pytest.raises(ValueError, match="optim.lrr: unknown key"):
            build_config(task, None, ["optim.lrr=1"])
