"""The training loop of sab-train: `run(args)` trains, evaluates every --eval-every updates, checkpoints, and
writes the run's files (metrics.csv, curve.png, checkpoint.pt, final.json, model.pt) to args.out.

Under torchrun each rank draws its own batches (seeded by seed, rank, step); rank 0 alone evaluates and writes.
Batches depend only on (seed, rank, step), so a resumed run sees the same data as an uninterrupted one.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings

import torch

from .._io import atomic_write
from ..nn import build_model
from ..nn.models import carry_state
from ..tasks import copy_transfer, make_task
from ..tasks.seeds import train_seed
from .args import transfer_lengths
from .checkpoint import OUTPUTS, load_checkpoint, save_checkpoint, unpack_state
from .evaluation import TEST_SET, evaluate_run
from .model_file import init_weights, model_description, save_model
from .records import plot_curve, write_csv


def _setup_distributed(args):
    """(rank, world_size, device); initialises the process group under torchrun (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    if world > 1:
        import torch.distributed as dist

        if device.type == "cuda":
            local = int(os.environ.get("LOCAL_RANK", "0"))
            device = torch.device("cuda", local)
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def clip_gradients(parameters, max_norm: float) -> float:
    """Clip the gradients' total 2-norm to max_norm (0: off), exactly as torch.nn.utils.clip_grad_norm_ does, and
    return the norm before clipping.

    One difference: a norm past float32's range (a sum of squares over 3.4e38; SAB's replay hops reach it at copy
    T = 200) is taken again in float64, so the clipped update still points along the gradient; clip_grad_norm_
    would scale it by 1/inf, i.e. zero it. The authors' script clipped in double too: its PyTorch 0.1.12
    clip_grad_norm added the per-parameter norms as Python floats. NaN or infinite entries give a non-finite norm
    and are left as they are.
    """
    params = [p for p in parameters if p.grad is not None]
    grads = [p.grad for p in params]
    if not grads:
        return 0.0
    norm = torch.nn.utils.get_total_norm(grads)
    if torch.isinf(norm):
        norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads))
    if max_norm and torch.isfinite(norm):
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
    return float(norm)


def batch_generator(seed: int, rank: int, step: int) -> torch.Generator:
    """The generator of training batch `step` on `rank` (tasks/seeds.py: disjoint from every evaluation set)."""
    return torch.Generator().manual_seed(train_seed(seed, rank, step))


def run(args: argparse.Namespace) -> dict:
    """Train and evaluate as configured by `args` (from parse_args, which checked them); returns the final
    metrics dict."""
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.flush_denormal and not torch.set_flush_denormal(True):
        warnings.warn("sab_kernels: --flush-denormal: this CPU cannot flush subnormal numbers; they are kept")
    rank, world, device = _setup_distributed(args)
    main_proc = rank == 0
    torch.manual_seed(args.seed)  # the same initial weights on every rank
    task = make_task(args.task, args.seq_len, args.input, args.data, not args.no_permute, args.seed)
    model = build_model(args.model, task.input_size, args.hidden, task.output_size, args.k_top, args.k_att,
                        args.k_trunc or None, args.attn_dim, args.backend, eps=args.eps, num_layers=args.num_layers,
                        dropout=args.dropout, recent_slots=args.recent_slots,
                        relevant_slots=args.relevant_slots).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    ckpt_path = os.path.join(args.out, "checkpoint.pt")
    start, rows, elapsed = 0, [], 0.0
    carried = None  # --stateful: the state the last chunk handed on
    if args.init and not (args.resume and os.path.exists(ckpt_path)):
        # Fine-tuning: the weights of a model file (its build must give the same parameter shapes; a bounded
        # memory or another T changes none).
        model.load_state_dict(init_weights(args.init))
    if args.resume and os.path.exists(ckpt_path):
        ckpt = load_checkpoint(ckpt_path, map_location=device)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        start, rows, elapsed = ckpt["step"], ckpt["rows"], ckpt.get("seconds", 0.0)
        carried = unpack_state(ckpt.get("carried"))
    if main_proc:
        os.makedirs(args.out, exist_ok=True)
        if args.overwrite:  # the earlier run's files go now, so none of them is mistaken for this run's
            for name in OUTPUTS:
                if os.path.exists(os.path.join(args.out, name)):
                    os.unlink(os.path.join(args.out, name))
    train_model = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        train_model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)

    def checkpoint(step):
        save_checkpoint(ckpt_path, model, opt, step, rows, elapsed, vars(args), carried)

    def lr_at(step):
        """The learning rate of optimizer step `step` (0-based): linear warm-up, then the schedule."""
        scale = min(1.0, (step + 1) / args.warmup) if args.warmup else 1.0
        if args.lr_schedule == "cosine":
            scale *= 0.5 * (1.0 + math.cos(math.pi * min(step, args.steps) / max(args.steps, 1)))
        return args.lr * scale

    # Training-side diagnostics of each evaluation interval: the largest gradient norm before clipping and the
    # share of steps the clip cut (spikes in the learning curve show up here first).
    interval = {"norm_max": 0.0, "clipped": 0, "skipped": 0, "steps": 0}

    def log_eval(step):
        metrics = evaluate_run(model, task, args, device)
        row = {"step": step, "seconds": round(elapsed, 2), **{k: round(v, 5) for k, v in metrics.items()}}
        if interval["steps"]:
            row.update(grad_norm_max=round(interval["norm_max"], 5), clip_frac=round(interval["clipped"] / interval["steps"], 5),
                       lr=lr_at(step - 1), skipped=interval["skipped"])
            interval.update(norm_max=0.0, clipped=0, skipped=0, steps=0)
        rows.append(row)
        write_csv(rows, os.path.join(args.out, "metrics.csv"))
        checkpoint(step)
        return metrics

    bar = None
    if main_proc and not args.no_progress:
        from tqdm import tqdm

        bar = tqdm(total=args.steps, initial=start, desc=f"{args.task}/{args.model}", file=sys.stderr, dynamic_ncols=True)
    t_start = time.perf_counter()
    train_loss = float("nan")
    for step in range(start, args.steps):
        t0 = time.perf_counter()
        if args.stateful:  # the next chunk of every stream, from the state the previous chunk left
            x, y, new_epoch = task.stream_batch(args.batch_size, step, device=device)
            logits, carried = model.forward_chunk(x, None if new_epoch else carried)
            carried = carry_state(carried, args.memory_window)
        else:
            x, y = task.batch(args.batch_size, batch_generator(args.seed, rank, step), "train", device)
            logits = train_model(x)
        loss = task.loss(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = clip_gradients(model.parameters(), args.clip)  # the pre-clip norm
        interval["norm_max"] = max(interval["norm_max"], norm)
        interval["clipped"] += bool(args.clip and norm > args.clip)
        interval["steps"] += 1
        # A non-finite norm means NaN or infinite entries, which Adam would spread to every weight: skip that
        # update, and, with --skip-norm, every update whose norm is past it.
        take = math.isfinite(norm) and not (args.skip_norm and norm > args.skip_norm)
        interval["skipped"] += not take
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        if take:
            opt.step()
        elapsed += time.perf_counter() - t0
        train_loss = loss.item()
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{train_loss:.4f}")
        if main_proc and ((step + 1) % args.eval_every == 0 or step + 1 == args.steps):
            metrics = log_eval(step + 1)
            if bar is not None:
                bar.set_postfix(loss=f"{train_loss:.4f}", **{task.main_metric: f"{metrics[task.main_metric]:.4f}"})
    if bar is not None:
        bar.close()
    if main_proc and not rows:  # resumed at or past --steps: evaluate once
        log_eval(start)
    result = {"task": args.task, "model": args.model}
    if main_proc:
        result.update(rows[-1])
        result.pop("seconds")
        build, task_info = model_description(vars(args), task)
        seq_len = task_info["seq_len"]  # the task's own length where it has one (784 for mnist5k), as model files say
        done = max(args.steps - start, 0)
        result.update({"seq_len": seq_len, "train_loss": train_loss, "train_seconds": round(elapsed, 2),
                       "steps_per_sec": round(done / max(time.perf_counter() - t_start, 1e-9), 3) if done else None,
                       "world_size": world, "params": sum(p.numel() for p in model.parameters())})
        if args.task == "copy" and args.transfer:
            lens = transfer_lengths(args.transfer)
            res = copy_transfer(model, lens, args.transfer_size, args.batch_size, args.input, seed=TEST_SET, device=device)
            result["transfer"] = {str(T): {k: round(v, 5) for k, v in m.items()} for T, m in res.items()}
        plot_curve(rows, os.path.join(args.out, "curve.png"), f"{args.task} T={seq_len} {args.model}")
        save_model(os.path.join(args.out, "model.pt"), model, build, task_info, metrics=result,
                   train_args=dict(vars(args)))
        atomic_write(os.path.join(args.out, "final.json"), lambda f: f.write(json.dumps(result, indent=1).encode("utf-8")))
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    return result
