"""The task interface shared by every experiment of SPEC section 3.

A task generates batches in memory from a `torch.Generator` (CPU, so a seed gives the same data on every
device) and knows its loss and metrics:
    input_size, output_size       sizes of x's last dim and of the model's per-step output
    batch(batch_size, generator, split="train", device="cpu") -> (x (B, L, input_size) float, y)
    eval_batches(batch_size, n_examples, seed=0, device="cpu", split="test"): a fixed evaluation set
    loss(logits (B, L, output_size), y) -> scalar tensor to minimise
    metrics(logits, y) -> {name: float}; `main_metric` names the one reported first, `higher_is_better`
"""

from __future__ import annotations

from typing import Dict, Tuple

import torch
from torch import Tensor

from .seeds import eval_seed, generator


class Task:
    name = "task"
    input_size = 1
    output_size = 1
    main_metric = "loss"
    higher_is_better = False

    def batch(self, batch_size: int, generator: torch.Generator, split: str = "train", device="cpu") -> Tuple[Tensor, Tensor]:
        raise NotImplementedError

    def loss(self, logits: Tensor, y: Tensor) -> Tensor:
        raise NotImplementedError

    def metrics(self, logits: Tensor, y: Tensor) -> Dict[str, float]:
        raise NotImplementedError

    splits = ("train", "valid", "test")  # generated tasks: validation and test are disjoint seed streams (seeds.py)

    def eval_batches(self, batch_size: int, n_examples: int, seed: int = 0, device="cpu", split: str = "test"):
        """Evaluation set number `seed` of `split` ("valid" or "test"; 0 is the standard set), at this task's length:
        the same for every model, and drawn from a seed no training batch uses (seeds.py)."""
        g = generator(eval_seed(split, seed, getattr(self, "seq_len", 0)))
        done = 0
        while done < n_examples:
            b = min(batch_size, n_examples - done)
            yield self.batch(b, g, split=split, device=device)
            done += b


class SequenceClassification(Task):
    """Shared by digits and MNIST: a pixel sequence, one label, the class read at the last step."""

    main_metric = "acc"
    higher_is_better = True
    input_size = 1
    output_size = 10

    def __init__(self, images: Tensor, labels: Tensor, n_test: int, permute: bool, seed: int):
        """images (N, L) float in [0, 1], labels (N,) int64; the last n_test examples are the test split."""
        L = images.shape[1]
        self.seq_len = L
        self.permutation = torch.randperm(L, generator=torch.Generator().manual_seed(seed)) if permute else torch.arange(L)
        images = images[:, self.permutation]
        self.train_x, self.train_y = images[:-n_test], labels[:-n_test]
        self.test_x, self.test_y = images[-n_test:], labels[-n_test:]
        self._test_pos = 0

    splits = ("train", "test")

    def _split(self, split: str):
        if split not in self.splits:
            raise ValueError(f"split must be one of {self.splits} for the {self.name} task, got {split!r}")
        return getattr(self, f"{split}_x"), getattr(self, f"{split}_y")

    def batch(self, batch_size, generator, split="train", device="cpu"):
        xs, ys = self._split(split)
        idx = torch.randint(0, xs.shape[0], (batch_size,), generator=generator)
        return xs[idx].unsqueeze(-1).to(device), ys[idx].to(device)

    def eval_batches(self, batch_size, n_examples, seed=0, device="cpu", split="test"):
        """The whole split (default "test") in order (n_examples caps it); `seed` is unused: the split is fixed."""
        xs, ys = self._split(split)
        n = min(n_examples, xs.shape[0])
        for start in range(0, n, batch_size):
            end = min(start + batch_size, n)
            yield xs[start:end].unsqueeze(-1).to(device), ys[start:end].to(device)

    def loss(self, logits, y):
        return torch.nn.functional.cross_entropy(logits[:, -1].float(), y)

    def metrics(self, logits, y):
        last = logits[:, -1].float()
        return {"acc": (last.argmax(-1) == y).float().mean().item(),
                "ce": torch.nn.functional.cross_entropy(last, y).item()}
