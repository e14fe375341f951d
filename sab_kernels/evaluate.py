"""`python -m sab_kernels.evaluate MODEL.pt [--seq-len 100,5000]`: evaluate a model file on a task's test set.

MODEL.pt is a model file (sab_kernels/training/model_file.py; `sab-train` writes OUT/model.pt). Copy models are
evaluated at every delay of --seq-len (default: the delay they were trained at), which is the paper's transfer
experiment, each delay on its own test set; models of the other tasks on their test set. Test sets of generated
tasks are drawn from seeds no training batch or validation set uses (sab_kernels/tasks/seeds.py). Prints a table, then one JSON line:
{"model": ..., "task": ..., "results": {"100": {"acc10": ..., "ce10": ..., "loss": ...}, ...}}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List, Optional

import torch

from .tasks import copy_transfer, make_task
from .tasks.chars import evaluate_streams
from .training.evaluation import evaluate_task
from .training.model_file import load_model


def _lengths(text: str) -> List[int]:
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got {text!r}")
    return values


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m sab_kernels.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("model", help="a model file (OUT/model.pt of sab-train)")
    p.add_argument("--seq-len", type=_lengths, default=None, help="copy: delays T to evaluate at, e.g. 100,5000")
    p.add_argument("--examples", type=int, default=512, help="fresh examples per length (default 512)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="default 64; a stateful chars model: the batch size it was trained with (its number of "
                        "streams, which the bpc depends on)")
    p.add_argument("--set", "--seed", dest="seed", type=int, default=0,
                   help="generated tasks: which test set (0: the standard one that sab-train logs and the README "
                        "reports; 1, 2, ...: fresh independent sets). Each delay T has its own set, drawn from seeds no "
                        "training batch uses. Fixed-split tasks (digits, mnist, mnist5k) always use their test split")
    p.add_argument("--device", default="cpu")
    p.add_argument("--backend", default="auto", choices=("auto", "cpu", "triton", "reference"))
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.seed < 0:
        p.error(f"--set must be >= 0, got {args.seed}")
    for name in ("examples", "batch_size", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if not os.path.isfile(args.model):
        p.error(f"model file not found: {args.model}")
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        model, info = load_model(args.model, args.device, args.backend)
    except ValueError as exc:
        print(f"sab_kernels.evaluate: {exc}", file=sys.stderr)
        return 2
    task_info = info["task"]
    batch = args.batch_size or 64
    if task_info["name"] == "copy":
        lens = args.seq_len or [task_info["seq_len"]]
        res = copy_transfer(model, lens, args.examples, batch, task_info["input"], seed=args.seed,
                            device=args.device)
        results = {str(T): m for T, m in res.items()}
    else:
        if args.seq_len:
            print("sab_kernels.evaluate: --seq-len applies to copy models only", file=sys.stderr)
            return 2
        task = make_task(task_info["name"], task_info["seq_len"], task_info["input"], task_info["data"],
                         task_info["permute"], task_info["seed"])
        if task_info.get("stateful"):  # the whole test split as streams, state carried (--examples unused)
            streams = args.batch_size or info.get("train_args", {}).get("batch_size") or 64
            metrics = evaluate_streams(model, task, streams, task_info["memory_window"], args.device)
        else:
            metrics = evaluate_task(model, task, args.examples, batch, args.seed, args.device)
        results = {str(task_info["seq_len"]): metrics}
    names = sorted({k for m in results.values() for k in m})
    print(f"{args.model}: {info['build']['kind']} on {task_info['name']} (trained at T={task_info['seq_len']}), "
          f"test set {args.seed}, {args.examples} examples per length")
    print("| T | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for T, m in results.items():
        print(f"| {T} | " + " | ".join(f"{m[k]:.4f}" for k in names) + " |")
    print(json.dumps({"model": args.model, "task": task_info["name"],
                      "results": {T: {k: round(v, 5) for k, v in m.items()} for T, m in results.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
