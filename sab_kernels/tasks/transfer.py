"""Transfer (SPEC section 3): evaluate a copy model trained at one delay T at longer delays."""

from __future__ import annotations

from typing import Dict, Iterable

import torch

from .copy import CopyTask


@torch.no_grad()
def copy_transfer(model, seq_lens: Iterable[int], n_examples: int = 256, batch_size: int = 64, input: str = "onehot",
                  seed: int = 0, device="cpu", split: str = "test") -> Dict[int, Dict[str, float]]:
    """{T: {"acc10", "ce10", "loss"}} of `model` (x (B, L, I) -> logits (B, L, 10)) on copy tasks of delay T.

    Each T has its own evaluation set: set number `seed` of `split` at length T (tasks/seeds.py; 0 is the standard
    test set), so no two delays share digit strings and none shares a seed with a training batch. Metrics are
    averaged over batches weighted by size. The model is put in eval mode and restored after.
    """
    was_training = model.training
    model.eval()
    results = {}
    try:
        for T in seq_lens:
            task = CopyTask(T, input)
            sums, count = {}, 0
            for x, y in task.eval_batches(batch_size, n_examples, seed, device, split=split):
                for k, v in task.metrics(model(x), y).items():
                    sums[k] = sums.get(k, 0.0) + v * x.shape[0]
                count += x.shape[0]
            results[int(T)] = {k: v / count for k, v in sums.items()}
    finally:
        model.train(was_training)
    return results
