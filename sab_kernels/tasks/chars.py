"""Character-level language modelling on a text file, in bits per character.

The vocabulary is the file's sorted set of characters. The text is cut in three contiguous splits: the first
90% for training, the next 5% for validation (what a run may stop or be tuned on) and the last 5% for testing
(what is reported). Two ways to draw batches:

- `batch`: B random windows of seq_len + 1 characters (x one-hot (B, T, V), y the next character at every step);
  every window starts from a fresh state.
- `stream_batch` (sab-train --stateful): the split is cut into B contiguous streams, as PTB language models are
  trained; batch `step` is chunk `step mod n_chunks` of every stream, so the model carries its state (and SAB its
  memory) from one chunk to the next, and gradient is cut between chunks. `evaluate_streams` walks a whole
  held-out split that way.

Loss: cross-entropy over all steps; reported: bpc = ce / ln 2.
"""

from __future__ import annotations

import math
from typing import Dict, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Task


class CharsTask(Task):
    name = "chars"
    main_metric = "bpc"
    higher_is_better = False

    splits = ("train", "valid", "test")

    def __init__(self, path: str, seq_len: int = 100, valid_fraction: float = 0.05, test_fraction: float = 0.05):
        if not path:
            raise ValueError("the chars task needs --data FILE (a text file)")
        with open(path, encoding="utf-8") as f:
            text = f.read()
        self.vocab = sorted(set(text))
        self.input_size = self.output_size = len(self.vocab)
        self.seq_len = seq_len
        lookup = {ch: i for i, ch in enumerate(self.vocab)}
        data = torch.tensor([lookup[ch] for ch in text], dtype=torch.int64)
        n_valid, n_test = (max(int(len(data) * f), seq_len + 2) for f in (valid_fraction, test_fraction))
        n_train = len(data) - n_valid - n_test
        if n_train < seq_len + 2:
            raise ValueError(f"{path} is too short ({len(data)} chars) for seq_len {seq_len}: each split needs at "
                             f"least seq_len + 2 = {seq_len + 2} chars")
        self.data = {"train": data[:n_train], "valid": data[n_train:n_train + n_valid], "test": data[n_train + n_valid:]}

    def _one_hot(self, ids: Tensor) -> Tensor:
        return F.one_hot(ids, self.input_size).float()

    def split(self, split: str) -> Tensor:
        """The character ids (N,) of `split` ("train", "valid" or "test")."""
        if split not in self.splits:
            raise ValueError(f"split must be one of {self.splits} for the chars task, got {split!r}")
        return self.data[split]

    def batch(self, batch_size, generator, split="train", device="cpu"):
        data = self.split(split)
        starts = torch.randint(0, len(data) - self.seq_len - 1, (batch_size,), generator=generator)
        windows = data[starts[:, None] + torch.arange(self.seq_len + 1)]
        return self._one_hot(windows[:, :-1]).to(device), windows[:, 1:].to(device)

    def streams(self, n_streams: int, split: str = "train") -> Tensor:
        """The split cut into `n_streams` contiguous rows (n_streams, L); the tail that does not fit is dropped.
        ValueError when a stream would be shorter than one chunk."""
        data = self.split(split)
        L = len(data) // n_streams
        if L < self.seq_len + 1:
            raise ValueError(f"the {split} split ({len(data)} chars) is too short for {n_streams} streams of at "
                             f"least seq_len + 1 = {self.seq_len + 1} chars")
        return data[: n_streams * L].view(n_streams, L)

    def n_chunks(self, n_streams: int, split: str = "train") -> int:
        """Chunks of seq_len characters per stream (one epoch of stream_batch)."""
        return (self.streams(n_streams, split).shape[1] - 1) // self.seq_len

    def stream_batch(self, batch_size: int, step: int, rank: int = 0, world: int = 1,
                     device="cpu") -> Tuple[Tensor, Tensor, bool]:
        """(x (B, T, V), y (B, T), starts_epoch) of training step `step`: chunk `step mod n_chunks` of this
        rank's B streams (of batch_size * world). starts_epoch: the chunk is the streams' first, so the carried
        state must be reset."""
        rows = self.streams(batch_size * world)[rank * batch_size:(rank + 1) * batch_size]
        j = step % ((rows.shape[1] - 1) // self.seq_len)
        return (*self.chunk(rows, j, device), j == 0)

    def chunk(self, rows: Tensor, j: int, device="cpu") -> Tuple[Tensor, Tensor]:
        """(x (B, T, V) one-hot, y (B, T)): chunk j of the streams `rows` (B, L), y the next character."""
        window = rows[:, j * self.seq_len: (j + 1) * self.seq_len + 1]
        return self._one_hot(window[:, :-1]).to(device), window[:, 1:].to(device)

    def loss(self, logits, y):
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1))

    def metrics(self, logits, y):
        ce = self.loss(logits, y).item()
        return {"bpc": ce / math.log(2), "ce": ce}


@torch.no_grad()
def evaluate_streams(model, task: CharsTask, batch_size: int, memory_window: int, device="cpu",
                     max_chunks: int = 0, split: str = "test") -> Dict[str, float]:
    """bpc and ce of `model` (a SequenceModel) over `split` read as `batch_size` streams, chunk by chunk, with
    the state carried as in stateful training (`carry_state`). max_chunks > 0 stops early."""
    from ..nn.models import carry_state

    rows = task.streams(batch_size, split)
    n = (rows.shape[1] - 1) // task.seq_len
    if max_chunks:
        n = min(n, max_chunks)
    was_training = model.training
    model.eval()
    state, total, count = None, 0.0, 0
    for j in range(n):
        x, y = task.chunk(rows, j, device)
        logits, state = model.forward_chunk(x, state)
        state = carry_state(state, memory_window)
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1), reduction="sum").item()
        count += y.numel()
    model.train(was_training)
    ce = total / count
    return {"bpc": ce / math.log(2), "ce": ce}
