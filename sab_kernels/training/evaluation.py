"""Evaluation of a model on a task's held-out data: what sab-train logs at every evaluation, and what
`python -m sab_kernels.evaluate` reports for a model file."""

from __future__ import annotations

from typing import Dict

import torch

from ..tasks.chars import evaluate_streams

TEST_SET = 0  # the standard evaluation set of each split (tasks/seeds.py); other numbers draw fresh sets


@torch.no_grad()
def evaluate_task(model, task, n_examples: int, batch_size: int, seed: int, device, split: str = "test") -> Dict[str, float]:
    """Metrics of `model` on `n_examples` examples of evaluation set number `seed` of `task`'s `split`, averaged with
    batch-size weights."""
    sums, count = {}, 0
    for x, y in task.eval_batches(batch_size, n_examples, seed=seed, device=device, split=split):
        for k, v in task.metrics(model(x), y).items():
            sums[k] = sums.get(k, 0.0) + v * x.shape[0]
        count += x.shape[0]
    return {k: v / count for k, v in sums.items()}


@torch.no_grad()
def evaluate_run(model, task, args, device) -> Dict[str, float]:
    """The metrics a sab-train run logs at an evaluation, from the run's arguments `args` (eval_size, batch_size,
    stateful, memory_window): the standard test set (reported), plus the standard validation set as val_* (what a
    run may stop on) when the task has one. Generated tasks draw both from seeds no training batch uses
    (tasks/seeds.py), the same sets for every run and seed; fixed-split tasks use their splits."""
    if args.stateful:  # whole held-out splits, read as streams
        metrics = evaluate_streams(model, task, args.batch_size, args.memory_window, device)
        valid = evaluate_streams(model, task, args.batch_size, args.memory_window, device, split="valid")
        return {**metrics, **{f"val_{k}": v for k, v in valid.items()}}
    was_training = model.training
    model.eval()
    try:
        metrics = evaluate_task(model, task, args.eval_size, args.batch_size, TEST_SET, device)
        if "valid" in getattr(task, "splits", ()):  # what a run may stop on, logged beside the test split's metrics
            valid = evaluate_task(model, task, args.eval_size, args.batch_size, TEST_SET, device, split="valid")
            metrics.update({f"val_{k}": v for k, v in valid.items()})
    finally:
        model.train(was_training)
    return metrics
