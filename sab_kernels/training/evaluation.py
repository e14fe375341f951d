"""Evaluation of a model on a task's held-out data: what sab-train logs at every evaluation, and what
`python -m sab_kernels.evaluate` reports for a model file."""

from __future__ import annotations

from typing import Dict

import torch

from ..tasks.chars import evaluate_streams


@torch.no_grad()
def evaluate_task(model, task, n_examples: int, batch_size: int, seed: int, device, split: str = "test") -> Dict[str, float]:
    """Metrics of `model` on `n_examples` examples of `task`'s `split`, averaged with batch-size weights."""
    sums, count = {}, 0
    for x, y in task.eval_batches(batch_size, n_examples, seed=seed, device=device, split=split):
        for k, v in task.metrics(model(x), y).items():
            sums[k] = sums.get(k, 0.0) + v * x.shape[0]
        count += x.shape[0]
    return {k: v / count for k, v in sums.items()}


@torch.no_grad()
def evaluate_run(model, task, args, device) -> Dict[str, float]:
    """The metrics a sab-train run logs at an evaluation, from the run's arguments `args` (eval_size, batch_size,
    seed, stateful, memory_window): the test split, plus the validation split as val_* when the task has one."""
    if args.stateful:
        return evaluate_streams(model, task, args.batch_size, args.memory_window, device)
    was_training = model.training
    model.eval()
    try:
        metrics = evaluate_task(model, task, args.eval_size, args.batch_size, 10_000 + args.seed, device)
        if "valid" in getattr(task, "splits", ()):  # what a run may stop on, logged beside the test split's metrics
            valid = evaluate_task(model, task, args.eval_size, args.batch_size, 10_000 + args.seed, device, split="valid")
            metrics.update({f"val_{k}": v for k, v in valid.items()})
    finally:
        model.train(was_training)
    return metrics
