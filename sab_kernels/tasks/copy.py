"""Copy memory (SPEC section 3): remember 10 digits across T blanks, repeat them after a marker.

Sequence of length T + 20: 10 digits from {1..8}, T - 1 blanks (0), the marker 9, then 10 blanks.
Target: blank (0) everywhere except the last 10 steps, which repeat the digits. Loss: cross-entropy over
every step; reported: accuracy (a fraction) and cross-entropy over the last 10 steps (acc10, ce10).
Chance on the last 10 steps: 1/8 = 12.5% once a model has learned to output digits there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Task

N_DIGITS = 10
BLANK, MARKER, VOCAB = 0, 9, 10


def copy_sequences(batch_size: int, seq_len: int, generator: torch.Generator):
    """(tokens (B, T+20) int64, targets (B, T+20) int64) for delay T = seq_len."""
    digits = torch.randint(1, 9, (batch_size, N_DIGITS), generator=generator)
    L = seq_len + 2 * N_DIGITS
    tokens = torch.zeros((batch_size, L), dtype=torch.int64)
    tokens[:, :N_DIGITS] = digits
    tokens[:, seq_len + N_DIGITS - 1] = MARKER
    targets = torch.zeros_like(tokens)
    targets[:, -N_DIGITS:] = digits
    return tokens, targets


class CopyTask(Task):
    """Copy memory with delay `seq_len` (T). input "onehot" (10 dims) or "scalar" (the digit as one float)."""

    name = "copy"
    output_size = VOCAB
    main_metric = "acc10"
    higher_is_better = True

    def __init__(self, seq_len: int = 100, input: str = "onehot"):
        if seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {seq_len}")
        if input not in ("onehot", "scalar"):
            raise ValueError(f"input must be 'onehot' or 'scalar', got {input!r}")
        self.seq_len, self.input = seq_len, input
        self.input_size = VOCAB if input == "onehot" else 1

    def encode(self, tokens):
        if self.input == "onehot":
            return F.one_hot(tokens, VOCAB).float()
        return tokens.float().unsqueeze(-1)

    def batch(self, batch_size, generator, split="train", device="cpu"):
        tokens, targets = copy_sequences(batch_size, self.seq_len, generator)
        return self.encode(tokens).to(device), targets.to(device)

    def loss(self, logits, y):
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1))

    def metrics(self, logits, y):
        last, y10 = logits[:, -N_DIGITS:].float(), y[:, -N_DIGITS:]
        return {
            "acc10": (last.argmax(-1) == y10).float().mean().item(),
            "ce10": F.cross_entropy(last.reshape(-1, VOCAB), y10.reshape(-1)).item(),
            "loss": self.loss(logits, y).item(),
        }
