"""Pixel-by-pixel (permuted) MNIST from the standard IDX files in a folder the user gives.

Files (optionally .gz): train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte,
t10k-labels-idx1-ubyte. Each image is a sequence of 784 pixels in [0, 1], with one fixed permutation when
`permute`. Nothing is downloaded.
"""

from __future__ import annotations

import gzip
import os
import struct

import numpy as np
import torch

from .base import SequenceClassification

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def _open(path):
    if os.path.exists(path):
        return open(path, "rb")
    if os.path.exists(path + ".gz"):
        return gzip.open(path + ".gz", "rb")
    raise FileNotFoundError(f"IDX file not found: {path} (or {path}.gz)")


def read_idx(path: str) -> np.ndarray:
    """Read an IDX file (magic 0x0000TTNN: type TT, NN dimensions, big-endian sizes) into an array."""
    with _open(path) as f:
        zero, dtype_code, ndim = struct.unpack(">HBB", f.read(4))
        if zero != 0 or dtype_code not in _DTYPES:
            raise ValueError(f"{path} is not an IDX file (magic bytes {zero:#06x} {dtype_code:#04x})")
        shape = struct.unpack(f">{ndim}I", f.read(4 * ndim))
        data = np.frombuffer(f.read(), dtype=_DTYPES[dtype_code])
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says shape {shape} but holds {data.size} values")
    return data.reshape(shape)


def write_idx(path: str, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file (the inverse of read_idx; used by the tests)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    with open(path, "wb") as f:
        f.write(struct.pack(">HBB", 0, 0x08, array.ndim))
        f.write(struct.pack(f">{array.ndim}I", *array.shape))
        f.write(array.tobytes())


class MNISTTask(SequenceClassification):
    name = "mnist"

    def __init__(self, folder: str, permute: bool = True, seed: int = 0):
        if not folder:
            raise ValueError("the mnist task needs --data FOLDER holding the four IDX files")
        arrays = {k: read_idx(os.path.join(folder, v)) for k, v in FILES.items()}
        images = np.concatenate([arrays["train_images"], arrays["test_images"]]).reshape(-1, arrays["train_images"][0].size)
        labels = np.concatenate([arrays["train_labels"], arrays["test_labels"]])
        super().__init__(torch.tensor(images, dtype=torch.float32) / 255.0, torch.tensor(labels, dtype=torch.int64),
                         len(arrays["test_labels"]), permute, seed)
