"""Adding problem (Hochreiter & Schmidhuber 1997): regress the sum of two marked numbers.

Input (B, T, 2): channel 0 uniform values in [0, 1]; channel 1 marks one position in the first half and
one in the second half. Target: the sum of the two marked values, read at the last step. Loss: MSE.
Predicting the mean (1.0) gives MSE 1/6 ~ 0.167; `acc` counts |error| < 0.04.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Task


class AddingTask(Task):
    name = "adding"
    input_size = 2
    output_size = 1
    main_metric = "mse"
    higher_is_better = False

    def __init__(self, seq_len: int = 100):
        if seq_len < 2:
            raise ValueError(f"seq_len must be >= 2, got {seq_len}")
        self.seq_len = seq_len

    def batch(self, batch_size, generator, split="train", device="cpu"):
        T, half = self.seq_len, self.seq_len // 2
        values = torch.rand((batch_size, T), generator=generator)
        first = torch.randint(0, half, (batch_size,), generator=generator)
        second = torch.randint(half, T, (batch_size,), generator=generator)
        marks = torch.zeros((batch_size, T))
        rows = torch.arange(batch_size)
        marks[rows, first] = 1.0
        marks[rows, second] = 1.0
        y = values[rows, first] + values[rows, second]
        return torch.stack([values, marks], dim=-1).to(device), y.to(device)

    def loss(self, logits, y):
        return F.mse_loss(logits[:, -1, 0].float(), y)

    def metrics(self, logits, y):
        err = logits[:, -1, 0].float() - y
        return {"mse": (err * err).mean().item(), "acc": (err.abs() < 0.04).float().mean().item()}
