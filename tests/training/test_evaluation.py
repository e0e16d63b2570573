"""Fréchet distance (analytic and against scipy), the digits judge, and the demo command."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from genmodels.cli.demo import register, run
from genmodels.data.digits import load_digits_tensor
from genmodels.evaluation.digits_classifier import DigitsClassifier
from genmodels.evaluation.frechet import frechet_distance


def test_frechet_analytic_and_scipy():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((20000, 3))
    b = rng.standard_normal((20000, 3)) * 2 + np.array([1.0, 0.0, 0.0])
    # N(0, I) vs N(mu, 4 I): |mu|^2 + 3 (1 + 4 - 2 * 2) = 1 + 3
    assert frechet_distance(a, b) == pytest.approx(4.0, rel=0.05)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    scipy_linalg = pytest.importorskip("scipy.linalg")
    x, y = rng.standard_normal((50, 4)), rng.standard_normal((60, 4)) @ rng.standard_normal((4, 4))
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    ref = ((x.mean(0) - y.mean(0)) ** 2).sum() + np.trace(
        s1 + s2 - 2 * scipy_linalg.sqrtm(s1 @ s2).real
    )
    assert frechet_distance(x, y) == pytest.approx(ref, rel=1e-6)
    with pytest.raises(ValueError, match="feature dims differ"):
        frechet_distance(x, y[:, :3])


def test_judge_real_digits_vs_noise():
    judge = DigitsClassifier(size=8)
    assert judge.test_accuracy > 0.95
    x, y = load_digits_tensor(8)
    real = judge.evaluate(x, y)
    assert real.accuracy > 0.97 and real.fd < 1e-6  # the same set as the reference
    noise = judge.evaluate(torch.rand(300, 1, 8, 8) * 2 - 1, torch.arange(300) % 10)
    assert noise.accuracy < 0.3 and noise.fd > 10 * real.fd_real
    with pytest.raises(ValueError, match="labels"):
        judge.evaluate(x[:3], y[:2])


def test_demo_command_smoke(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["demo", "--out", str(tmp_path), "--steps", "2", "--per-class", "2", "--sample-steps",
         "2", "progress=false"]
    )  # fmt: skip
    assert run(args) == 0
    figures = json.loads((tmp_path / "report.json").read_text())
    assert set(figures) >= {"accuracy", "fd", "fd_real_vs_real", "total_s"}
    assert figures["samples"] == 20
    assert (tmp_path / "samples.png").is_file() and (tmp_path / "samples_all.png").is_file()
    assert "class accuracy" in capsys.readouterr().out
