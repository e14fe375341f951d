"""Pixel-by-pixel (permuted) digits: scikit-learn's 8x8 digits (1797 images, shipped inside the package).

A small stand-in for pixel-by-pixel permuted MNIST that needs no download: each image is a sequence of 64
pixels in [0, 1]; with `permute` one fixed permutation (from `seed`) reorders every image. The class is read
at the last step. Split: the last 297 images (after a seeded shuffle) are the test set.
"""

from __future__ import annotations

import torch

from .base import SequenceClassification


def load_digits_tensors():
    """(images (1797, 64) float in [0, 1], labels (1797,) int64) from sklearn.datasets.load_digits."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - scikit-learn is in the [tasks] and [test] extras
        raise ImportError("the digits task needs scikit-learn: pip install scikit-learn") from exc
    data = load_digits()
    images = torch.tensor(data.data, dtype=torch.float32) / 16.0
    return images, torch.tensor(data.target, dtype=torch.int64)


class DigitsTask(SequenceClassification):
    name = "digits"

    def __init__(self, permute: bool = True, seed: int = 0, n_test: int = 297):
        images, labels = load_digits_tensors()
        order = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(1234))
        super().__init__(images[order], labels[order], n_test, permute, seed)
