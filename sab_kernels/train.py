"""`python -m sab_kernels.train TASK [options]` (console script `sab-train`): train a model on a SAB task.

    python -m sab_kernels.train copy --model sab --seq-len 20 --steps 3000 --out runs/copy_sab
    torchrun --nproc_per_node 2 -m sab_kernels.train copy --model sab ...   # DistributedDataParallel

Writes to --out: metrics.csv (one row per evaluation), curve.png (learning curve), checkpoint.pt (model,
optimizer, step; --resume continues from it) and final.json. The last line on stdout is one JSON object
with the final metrics, e.g. {"task": "copy", "model": "sab", "acc10": 0.43, "ce10": 1.2, ...}
(accuracies are fractions). Under torchrun each rank draws its own batches (seeded by seed, rank, step);
rank 0 alone evaluates and writes. Batches depend only on (seed, rank, step), so a resumed run sees the
same data as an uninterrupted one.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from typing import Dict, List, Optional

import torch

from .nn import MODEL_KINDS, build_model
from .tasks import TASKS, copy_transfer, make_task


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="sab-train", description=__doc__.split("\n")[0])
    p.add_argument("task", choices=TASKS)
    p.add_argument("--model", choices=MODEL_KINDS, default="sab",
                   help="sab | tbptt (no memory) | bptt (no truncation, no memory) | dense (softmax over all slots) | lstm (torch.nn.LSTM)")
    p.add_argument("--seq-len", type=int, default=100, help="copy: delay T (sequence T+20); adding/chars: length")
    p.add_argument("--k-top", type=int, default=5)
    p.add_argument("--k-att", type=int, default=2)
    p.add_argument("--k-trunc", type=int, default=5, help="truncation interval (0: never)")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--attn-dim", type=int, default=None, help="scoring MLP width D (default: --hidden)")
    p.add_argument("--batch-size", type=int, default=64, help="per process")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--clip", type=float, default=1.0, help="gradient-norm clip (0: off)")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--backend", default="auto", help="sparse-attention backend: auto, cpu, triton, reference")
    p.add_argument("--input", choices=("onehot", "scalar"), default="onehot", help="copy: input encoding")
    p.add_argument("--data", default=None, help="mnist: folder of IDX files; chars: text file")
    p.add_argument("--no-permute", action="store_true", help="digits/mnist: keep the pixel order")
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--eval-size", type=int, default=512, help="examples per evaluation")
    p.add_argument("--transfer", default="", help="copy: comma-separated delays T to evaluate at the end")
    p.add_argument("--transfer-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: leave)")
    p.add_argument("--out", default=None, help="output folder (default runs/TASK_MODEL_T)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    args = p.parse_args(argv)
    if args.out is None:
        args.out = os.path.join("runs", f"{args.task}_{args.model}_{args.seq_len}")
    return args


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


def _batch_generator(seed: int, rank: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + rank * 7_919 + step) % (2**63))


@torch.no_grad()
def evaluate(model, task, args, device) -> Dict[str, float]:
    model.eval()
    sums, count = {}, 0
    for x, y in task.eval_batches(args.batch_size, args.eval_size, seed=10_000 + args.seed, device=device):
        for k, v in task.metrics(model(x), y).items():
            sums[k] = sums.get(k, 0.0) + v * x.shape[0]
        count += x.shape[0]
    model.train()
    return {k: v / count for k, v in sums.items()}


def plot_curve(rows: List[dict], path: str, title: str) -> None:
    """Learning curve: every metric column against step, one panel each, PNG via the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [k for k in rows[0] if k not in ("step", "seconds")]
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.2), squeeze=False)
    steps = [r["step"] for r in rows]
    for ax, name in zip(axes[0], names):
        ax.plot(steps, [r[name] for r in rows], marker=".")
        ax.set_xlabel("step")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _write_csv(rows: List[dict], path: str) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def read_rows(path: str) -> List[dict]:
    """metrics.csv back as a list of {column: float} (step as int)."""
    with open(path, newline="") as f:
        return [{k: (int(v) if k == "step" else float(v)) for k, v in row.items()} for row in csv.DictReader(f)]


def run(args: argparse.Namespace) -> dict:
    """Train and evaluate as configured by `args` (see parse_args); returns the final metrics dict."""
    if args.threads:
        torch.set_num_threads(args.threads)
    rank, world, device = _setup_distributed(args)
    main_proc = rank == 0
    torch.manual_seed(args.seed)  # the same initial weights on every rank
    task = make_task(args.task, args.seq_len, args.input, args.data, not args.no_permute, args.seed)
    model = build_model(args.model, task.input_size, args.hidden, task.output_size, args.k_top, args.k_att,
                        args.k_trunc or None, args.attn_dim, args.backend).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    os.makedirs(args.out, exist_ok=True)
    ckpt_path = os.path.join(args.out, "checkpoint.pt")
    start, rows, elapsed = 0, [], 0.0
    if args.resume and os.path.exists(ckpt_path):
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        start, rows, elapsed = ckpt["step"], ckpt["rows"], ckpt.get("seconds", 0.0)
    train_model = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        train_model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)

    def checkpoint(step):
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step, "rows": rows,
                    "seconds": elapsed, "args": vars(args)}, ckpt_path)

    def log_eval(step):
        metrics = evaluate(model, task, args, device)
        rows.append({"step": step, "seconds": round(elapsed, 2), **{k: round(v, 5) for k, v in metrics.items()}})
        _write_csv(rows, os.path.join(args.out, "metrics.csv"))
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
        x, y = task.batch(args.batch_size, _batch_generator(args.seed, rank, step), "train", device)
        loss = task.loss(train_model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if args.clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
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
        done = max(args.steps - start, 0)
        result.update({"seq_len": args.seq_len, "train_loss": train_loss, "train_seconds": round(elapsed, 2),
                       "steps_per_sec": round(done / max(time.perf_counter() - t_start, 1e-9), 3) if done else None,
                       "world_size": world, "params": sum(p.numel() for p in model.parameters())})
        if args.task == "copy" and args.transfer:
            lens = [int(t) for t in args.transfer.split(",") if t.strip()]
            res = copy_transfer(model, lens, args.transfer_size, args.batch_size, args.input, seed=20_000 + args.seed, device=device)
            result["transfer"] = {str(T): {k: round(v, 5) for k, v in m.items()} for T, m in res.items()}
        plot_curve(rows, os.path.join(args.out, "curve.png"), f"{args.task} T={args.seq_len} {args.model}")
        with open(os.path.join(args.out, "final.json"), "w") as f:
            json.dump(result, f, indent=1)
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    return result


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    result = run(args)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
