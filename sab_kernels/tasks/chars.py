"""Character-level language modelling on a text file the user gives (PTB/text8-style), in bits per char.

The vocabulary is the file's sorted set of characters. The first 90% of the text is the training split,
the rest the test split. A batch is B random windows of seq_len + 1 characters: x one-hot (B, T, V), y the
next character at every step. Loss: cross-entropy over all steps; reported: bpc = ce / ln 2.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .base import Task


class CharsTask(Task):
    name = "chars"
    main_metric = "bpc"
    higher_is_better = False

    def __init__(self, path: str, seq_len: int = 100, test_fraction: float = 0.1):
        if not path:
            raise ValueError("the chars task needs --data FILE (a text file)")
        with open(path, encoding="utf-8") as f:
            text = f.read()
        self.vocab = sorted(set(text))
        self.input_size = self.output_size = len(self.vocab)
        self.seq_len = seq_len
        lookup = {ch: i for i, ch in enumerate(self.vocab)}
        data = torch.tensor([lookup[ch] for ch in text], dtype=torch.int64)
        n_test = max(int(len(data) * test_fraction), seq_len + 2)
        if len(data) - n_test < seq_len + 2:
            raise ValueError(f"{path} is too short ({len(data)} chars) for seq_len {seq_len}")
        self.train_data, self.test_data = data[:-n_test], data[-n_test:]

    def batch(self, batch_size, generator, split="train", device="cpu"):
        data = self.train_data if split == "train" else self.test_data
        starts = torch.randint(0, len(data) - self.seq_len - 1, (batch_size,), generator=generator)
        windows = data[starts[:, None] + torch.arange(self.seq_len + 1)]
        x = F.one_hot(windows[:, :-1], self.input_size).float()
        return x.to(device), windows[:, 1:].to(device)

    def loss(self, logits, y):
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1))

    def metrics(self, logits, y):
        ce = self.loss(logits, y).item()
        return {"bpc": ce / math.log(2), "ce": ce}
