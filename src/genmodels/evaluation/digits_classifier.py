"""A scikit-learn classifier of the real digits that judges generated ones.

An MLP (64 -> hidden ReLU -> 10) is trained on sklearn's 8x8 digits; generated images are
brought back to that layout (area-downsampled to 8x8, 0..16). Reported figures:

* accuracy: how often the classifier recognises the class the sample was generated for;
* Fréchet distance of the hidden-layer features (our FID analogue) between all real and the
  generated digits, next to the real-vs-real figure (two disjoint halves of the real digits) as
  its floor.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import Tensor

from genmodels.data.digits import DIGITS_MAX, load_digits_arrays, load_digits_tensor, to_native

from .frechet import frechet_distance

__all__ = ["DigitsClassifier", "DigitsReport"]


@dataclass
class DigitsReport:
    accuracy: float
    fd: float
    fd_real: float  # real-vs-real floor
    classifier_test_accuracy: float

    def __str__(self) -> str:
        return (
            f"class accuracy {self.accuracy * 100:.1f}% | FD {self.fd:.2f} "
            f"(real-vs-real floor {self.fd_real:.2f}) | classifier test accuracy on real "
            f"digits {self.classifier_test_accuracy * 100:.1f}%"
        )


class DigitsClassifier:
    """MLP judge trained on 75% of the real digits; ``features`` are its hidden activations.

    ``size`` is the resolution the generator works at: the real reference set for the Fréchet
    distance takes the same upscale-and-back round trip as the generated images.
    """

    def __init__(self, size: int = 8, hidden: int = 128, seed: int = 0) -> None:
        try:
            from sklearn.model_selection import train_test_split
            from sklearn.neural_network import MLPClassifier
            from threadpoolctl import threadpool_limits
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(
                "digits evaluation needs scikit-learn: pip install scikit-learn"
            ) from exc
        images, labels = load_digits_arrays()
        x, y = images.flatten(1).numpy() / DIGITS_MAX, labels.numpy()
        xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.25, random_state=seed, stratify=y)
        # one BLAS thread: this problem is small, and spinning BLAS threads stall on a busy CPU
        with threadpool_limits(limits=1):
            self.clf = MLPClassifier((hidden,), max_iter=300, random_state=seed).fit(xtr, ytr)
        self.test_accuracy = float(self.clf.score(xte, yte))
        real, _ = load_digits_tensor(size)
        self.real_x = to_native(real).numpy() / DIGITS_MAX  # (N, 64), round-tripped like samples
        self.seed = seed

    def features(self, x: np.ndarray) -> np.ndarray:
        """Hidden activations (N, hidden) of native-layout inputs (N, 64) scaled to 0..1."""
        return np.maximum(x @ self.clf.coefs_[0] + self.clf.intercepts_[0], 0)

    def evaluate(self, images: Tensor, labels: Tensor) -> DigitsReport:
        """Judge generated images (N, 1, H, W) in [-1, 1] meant to show ``labels`` (N,)."""
        if images.shape[0] != labels.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels")
        x = to_native(images).numpy() / DIGITS_MAX
        accuracy = float((self.clf.predict(x) == labels.cpu().numpy()).mean())
        fd = frechet_distance(self.features(self.real_x), self.features(x))
        perm = np.random.default_rng(self.seed).permutation(len(self.real_x))
        half = len(perm) // 2
        fd_real = frechet_distance(
            self.features(self.real_x[perm[:half]]), self.features(self.real_x[perm[half:]])
        )
        return DigitsReport(accuracy, fd, fd_real, self.test_accuracy)
