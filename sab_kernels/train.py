"""`python -m sab_kernels.train TASK [options]` (console script `sab-train`): train a model on a SAB task.

    python -m sab_kernels.train copy --model sab --seq-len 20 --steps 3000 --out runs/copy_sab
    torchrun --nproc_per_node 2 -m sab_kernels.train copy --model sab ...   # DistributedDataParallel

Writes to --out: metrics.csv (one row per evaluation), curve.png (learning curve), checkpoint.pt (model,
optimizer, step; --resume continues from it) and final.json, each replaced atomically (temporary file,
fsync, rename), so a run killed mid-save keeps its previous checkpoint. The last line on stdout is one JSON
object with the final metrics, e.g. {"task": "copy", "model": "sab", "acc10": 0.43, "ce10": 1.2, ...}
(accuracies are fractions). Under torchrun each rank draws its own batches (seeded by seed, rank, step);
rank 0 alone evaluates and writes. Batches depend only on (seed, rank, step), so a resumed run sees the
same data as an uninterrupted one.

Every argument is checked before any work (the data file, the output folder, the checkpoint to resume):
a bad one exits with status 2 and a one-line message, and nothing is written. An --out that already holds
a run is refused unless --resume (continue it) or --overwrite (replace it) is given. --resume refuses
hyper-parameters that differ from the checkpoint's (listing them); --steps, --eval-every, --transfer,
--transfer-size, --threads, --device, --backend and --no-progress may change.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import sys
import time
from typing import Dict, List, Optional

import torch

from ._io import atomic_write
from .kernels import triton_interpreter_enabled
from .evaluate import evaluate_task
from .model_file import model_description, save_model
from .nn import MODEL_KINDS, SABState, build_model
from .tasks import TASKS, copy_transfer, make_task
from .tasks.chars import evaluate_streams
from .nn.models import carry_state


# Settings that define the trained model and its data: a resumed run must use the checkpoint's values.
RESUME_MUST_MATCH = ("task", "model", "seq_len", "k_top", "k_att", "k_trunc", "hidden", "attn_dim", "batch_size",
                     "lr", "clip", "skip_norm", "lr_schedule", "warmup", "eps", "seed", "input", "data", "no_permute", "eval_size",
                     "stateful", "memory_window")
OUTPUTS = ("checkpoint.pt", "metrics.csv", "final.json", "curve.png", "model.pt")
BACKENDS = ("auto", "cpu", "triton", "reference")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sab-train", description=__doc__.split("\n")[0],
                                epilog="Bad arguments exit with status 2 before any work; nothing is written.")
    p.add_argument("task", choices=TASKS)
    p.add_argument("--model", choices=MODEL_KINDS, default="sab",
                   help="sab | tbptt (no memory) | bptt (no truncation, no memory) | dense (softmax over all slots) | lstm (torch.nn.LSTM)")
    p.add_argument("--seq-len", type=int, default=100, help="copy: delay T (sequence T+20); adding/chars: length")
    p.add_argument("--k-top", type=int, default=5, help="slots kept per attention (>= 1)")
    p.add_argument("--k-att", type=int, default=2, help="write a memory slot every K_ATT steps (>= 1)")
    p.add_argument("--k-trunc", type=int, default=5, help="truncation interval (0: never)")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--attn-dim", type=int, default=None, help="scoring MLP width D (default: --hidden)")
    p.add_argument("--batch-size", type=int, default=64, help="per process")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--clip", type=float, default=1.0, help="gradient-norm clip (0: off)")
    p.add_argument("--skip-norm", type=float, default=0.0,
                   help="skip an update whose gradient norm before clipping exceeds this (0: never; the paper's "
                        "protocol never skips). SAB's spikes are gradients compounded along replay hops: "
                        "bench/results/training/spike_probe.py")
    p.add_argument("--lr-schedule", choices=("constant", "cosine"), default="constant",
                   help="constant (the paper's), or cosine decay from --lr to 0 at --steps")
    p.add_argument("--warmup", type=int, default=0, help="linear learning-rate warm-up over this many steps")
    p.add_argument("--eps", type=float, default=1e-7,
                   help="the sparsifier's epsilon, a = relu(s - tau) / (sum + eps) (default 1e-7, the paper's)")
    p.add_argument("--steps", type=int, default=1000, help="total optimizer steps (a resumed run continues to it)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--backend", choices=BACKENDS, default="auto", help="sparse-attention backend")
    p.add_argument("--input", choices=("onehot", "scalar"), default="onehot", help="copy: input encoding")
    p.add_argument("--data", default=None, help="mnist: folder of IDX files; chars: text file")
    p.add_argument("--no-permute", action="store_true", help="digits/mnist/mnist5k: keep the pixel order (sequential MNIST)")
    p.add_argument("--stateful", action="store_true",
                   help="chars: read the text as --batch-size contiguous streams, chunk after chunk, carrying the "
                        "state (and SAB's memory) across batches; evaluation walks the whole test split")
    p.add_argument("--memory-window", type=int, default=256,
                   help="--stateful: memory slots carried into the next chunk: the first and the newest (0: all)")
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--eval-size", type=int, default=512, help="examples per evaluation")
    p.add_argument("--transfer", default="", help="copy: comma-separated delays T to evaluate at the end")
    p.add_argument("--transfer-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: leave)")
    p.add_argument("--out", default=None, help="output folder (default runs/TASK_MODEL_T)")
    p.add_argument("--resume", action="store_true",
                   help="continue from OUT/checkpoint.pt (a fresh start if there is none); refused when a "
                        f"hyper-parameter differs from the checkpoint's ({', '.join(k.replace('_', '-') for k in RESUME_MUST_MATCH)})")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in OUT (default: refuse)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    return p


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """Parse and check every argument: on any bad one, print a one-line error and exit with status 2."""
    p = _parser()
    args = p.parse_args(argv)
    if args.out is None:
        args.out = os.path.join("runs", f"{args.task}_{args.model}_{args.seq_len}")
    try:
        check_args(args)
    except ValueError as exc:
        p.error(str(exc))
    return args


def transfer_lengths(spec: str) -> List[int]:
    """--transfer "200,300" -> [200, 300]; ValueError for anything but positive integers."""
    try:
        lens = [int(t) for t in spec.split(",") if t.strip()]
    except ValueError:
        raise ValueError(f"--transfer must be comma-separated integers >= 1, e.g. 200,300; got {spec!r}") from None
    if any(t < 1 for t in lens):
        raise ValueError(f"--transfer delays must be >= 1, got {spec!r}")
    return lens


def _check_data(args) -> None:
    if args.task not in ("mnist", "chars"):
        if args.data is not None:
            raise ValueError(f"--data applies to the mnist and chars tasks only, not {args.task}")
        return
    want = "a folder of IDX files" if args.task == "mnist" else "a text file"
    if args.data is None:
        raise ValueError(f"the {args.task} task needs --data ({want})")
    is_dir = os.path.isdir(args.data)
    if not os.path.exists(args.data):
        raise ValueError(f"--data {args.data}: no such file or folder (expected {want})")
    if is_dir != (args.task == "mnist"):
        raise ValueError(f"--data {args.data}: expected {want}")
    if not os.access(args.data, os.R_OK | (os.X_OK if is_dir else 0)):
        raise ValueError(f"--data {args.data}: not readable")


def _check_numbers(args) -> None:
    at_least = [("--seq-len", args.seq_len, 1), ("--k-top", args.k_top, 1 if args.model == "sab" else 0),
                ("--k-att", args.k_att, 1), ("--k-trunc", args.k_trunc, 0), ("--hidden", args.hidden, 1),
                ("--batch-size", args.batch_size, 1), ("--steps", args.steps, 0), ("--eval-every", args.eval_every, 1),
                ("--eval-size", args.eval_size, 1), ("--transfer-size", args.transfer_size, 1), ("--warmup", args.warmup, 0),
                ("--memory-window", args.memory_window, 0)]
    if args.attn_dim is not None:
        at_least.append(("--attn-dim", args.attn_dim, 1))
    if args.threads is not None:
        at_least.append(("--threads", args.threads, 1))
    for name, value, low in at_least:
        if value < low:
            raise ValueError(f"{name} must be >= {low}, got {value}")
    if not (math.isfinite(args.lr) and args.lr > 0):
        raise ValueError(f"--lr must be a finite number > 0, got {args.lr}")
    if not (math.isfinite(args.eps) and args.eps > 0):
        raise ValueError(f"--eps must be a finite number > 0, got {args.eps}")
    if not (math.isfinite(args.clip) and args.clip >= 0):
        raise ValueError(f"--clip must be a finite number >= 0 (0: off), got {args.clip}")
    if not (math.isfinite(args.skip_norm) and args.skip_norm >= 0):
        raise ValueError(f"--skip-norm must be a finite number >= 0 (0: never skip), got {args.skip_norm}")


def _check_device(args) -> None:
    if args.device is None:
        return
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise ValueError(f"--device must be cpu, cuda or cuda:N, got {args.device!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device}: CUDA is not available on this machine")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"--device {args.device}: only {torch.cuda.device_count()} CUDA device(s)")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device must be cpu, cuda or cuda:N, got {args.device!r}")


def load_checkpoint(path: str, map_location="cpu") -> dict:
    """A checkpoint written by this CLI (plain values only, loaded with weights_only=True); ValueError if it is
    unreadable, truncated or not one of ours."""
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - EOFError, zip and unpickling errors all mean "corrupt"
        first = " ".join(str(exc).split()).split(". ")[0]  # torch's messages run to several sentences
        reason = "the file is empty" if os.path.getsize(path) == 0 else f"{type(exc).__name__}: {first}"
        raise ValueError(f"{path} is not a readable checkpoint ({reason}); remove it or use --overwrite to start "
                         "again") from None
    missing = [k for k in ("model", "optimizer", "step", "rows", "args") if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise ValueError(f"{path} is not a sab-train checkpoint (missing {', '.join(missing)})")
    return ckpt


def _check_out(args) -> None:
    if args.resume and args.overwrite:
        raise ValueError("--resume and --overwrite contradict each other: pick one")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise ValueError(f"--out {args.out} exists and is not a folder")
    existing = [name for name in OUTPUTS if os.path.exists(os.path.join(args.out, name))]
    if existing and not (args.resume or args.overwrite):
        raise ValueError(f"--out {args.out} already holds a run ({', '.join(existing)}): pass --resume to continue "
                         "it or --overwrite to replace it")
    parent = args.out
    while not os.path.isdir(parent):  # the nearest existing folder must let us create OUT inside it
        parent = os.path.dirname(os.path.abspath(parent))
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"--out {args.out}: {parent} is not writable")
    ckpt_path = os.path.join(args.out, "checkpoint.pt")
    if args.resume and os.path.exists(ckpt_path):
        saved = load_checkpoint(ckpt_path)["args"]
        must_match = RESUME_MUST_MATCH + (("steps",) if args.lr_schedule == "cosine" else ())  # it sets the decay
        diff = [f"--{k.replace('_', '-')} {saved[k]!r} in the checkpoint, {getattr(args, k)!r} now"
                for k in must_match if k in saved and saved[k] != getattr(args, k)]
        if diff:
            raise ValueError(f"--resume: {ckpt_path} was trained with other settings ({'; '.join(diff)}); "
                             "rerun with the checkpoint's values, or use a new --out")


def check_args(args: argparse.Namespace) -> None:
    """Raise ValueError (one line) for the first bad argument; reads files, writes nothing."""
    _check_data(args)  # first: the input a long run would otherwise fail on only when it gets there
    _check_numbers(args)
    if args.stateful and args.task != "chars":
        raise ValueError(f"--stateful applies to the chars task only, not {args.task}")
    if args.stateful and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("--stateful runs in one process (its streams are split by batch, not by rank)")
    if args.transfer:
        if args.task != "copy":
            raise ValueError(f"--transfer applies to the copy task only, not {args.task}")
        transfer_lengths(args.transfer)
    _check_device(args)
    device_type = torch.device(args.device).type if args.device else ("cuda" if torch.cuda.is_available() else "cpu")
    if args.backend == "triton" and device_type != "cuda" and not triton_interpreter_enabled():
        raise ValueError("--backend triton needs a CUDA device (or TRITON_INTERPRET=1 for the interpreter on CPU)")
    try:  # builds the task's data (seq-len limits, a text too short, missing IDX files)
        task = make_task(args.task, args.seq_len, args.input, args.data, not args.no_permute, args.seed)
        if args.stateful:
            task.streams(args.batch_size, "train"), task.streams(args.batch_size, "test")
    except (ValueError, OSError, ImportError) as exc:
        raise ValueError(f"{args.task}: {exc}") from None
    _check_out(args)


def _pack_state(state) -> Optional[dict]:
    """A carried state as plain tensors and ints (loads with weights_only=True); None stays None."""
    if state is None:
        return None
    packed = {"h": state[0], "c": state[1]}
    if isinstance(state, SABState):
        packed.update(memory=state.memory, step=state.step)
    return packed


def _unpack_state(packed: Optional[dict]):
    if packed is None:
        return None
    if "step" in packed:
        return SABState(packed["h"], packed["c"], packed["memory"], packed["step"])
    return packed["h"], packed["c"]


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


def _batch_generator(seed: int, rank: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + rank * 7_919 + step) % (2**63))


@torch.no_grad()
def evaluate(model, task, args, device) -> Dict[str, float]:
    if args.stateful:
        return evaluate_streams(model, task, args.batch_size, args.memory_window, device)
    model.eval()
    metrics = evaluate_task(model, task, args.eval_size, args.batch_size, 10_000 + args.seed, device)
    if "valid" in getattr(task, "splits", ()):  # what a run may stop on, logged beside the test split's metrics
        valid = evaluate_task(model, task, args.eval_size, args.batch_size, 10_000 + args.seed, device, split="valid")
        metrics.update({f"val_{k}": v for k, v in valid.items()})
    model.train()
    return metrics


def plot_curve(rows: List[dict], path: str, title: str) -> None:
    """Learning curve: every metric column against step, one panel each, PNG via the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [k for k in dict.fromkeys(k for r in rows for k in r) if k not in ("step", "seconds")]
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.2), squeeze=False)
    steps = [r["step"] for r in rows]
    for ax, name in zip(axes[0], names):
        ax.plot(steps, [r.get(name, math.nan) for r in rows], marker=".")
        if name == "grad_norm_max":
            ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)


def _write_csv(rows: List[dict], path: str) -> None:
    text = io.StringIO(newline="")
    # Columns of every row, in first-seen order (a run resumed from an older checkpoint gains columns).
    writer = csv.DictWriter(text, fieldnames=list(dict.fromkeys(k for r in rows for k in r)), restval="")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, lambda f: f.write(text.getvalue().encode("utf-8")))


def read_rows(path: str) -> List[dict]:
    """metrics.csv back as a list of {column: float} (step as int)."""
    with open(path, newline="") as f:
        return [{k: (int(v) if k == "step" else float(v) if v != "" else math.nan) for k, v in row.items()}
                for row in csv.DictReader(f)]


def run(args: argparse.Namespace) -> dict:
    """Train and evaluate as configured by `args` (from parse_args, which checked them); returns the final
    metrics dict."""
    if args.threads:
        torch.set_num_threads(args.threads)
    rank, world, device = _setup_distributed(args)
    main_proc = rank == 0
    torch.manual_seed(args.seed)  # the same initial weights on every rank
    task = make_task(args.task, args.seq_len, args.input, args.data, not args.no_permute, args.seed)
    model = build_model(args.model, task.input_size, args.hidden, task.output_size, args.k_top, args.k_att,
                        args.k_trunc or None, args.attn_dim, args.backend, eps=args.eps).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    ckpt_path = os.path.join(args.out, "checkpoint.pt")
    start, rows, elapsed = 0, [], 0.0
    carried = None  # --stateful: the state the last chunk handed on
    if args.resume and os.path.exists(ckpt_path):
        ckpt = load_checkpoint(ckpt_path, map_location=device)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        start, rows, elapsed = ckpt["step"], ckpt["rows"], ckpt.get("seconds", 0.0)
        carried = _unpack_state(ckpt.get("carried"))
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
        # Plain values only (tensors, numbers, strings, lists, dicts), so it loads with weights_only=True.
        state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step, "rows": rows,
                 "seconds": elapsed, "args": dict(vars(args)), "carried": _pack_state(carried)}
        atomic_write(ckpt_path, lambda f: torch.save(state, f))

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
        metrics = evaluate(model, task, args, device)
        row = {"step": step, "seconds": round(elapsed, 2), **{k: round(v, 5) for k, v in metrics.items()}}
        if interval["steps"]:
            row.update(grad_norm_max=round(interval["norm_max"], 5), clip_frac=round(interval["clipped"] / interval["steps"], 5),
                       lr=lr_at(step - 1), skipped=interval["skipped"])
            interval.update(norm_max=0.0, clipped=0, skipped=0, steps=0)
        rows.append(row)
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
        if args.stateful:  # the next chunk of every stream, from the state the previous chunk left
            x, y, new_epoch = task.stream_batch(args.batch_size, step, device=device)
            logits, carried = model.forward_chunk(x, None if new_epoch else carried)
            carried = carry_state(carried, args.memory_window)
        else:
            x, y = task.batch(args.batch_size, _batch_generator(args.seed, rank, step), "train", device)
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
        done = max(args.steps - start, 0)
        result.update({"seq_len": args.seq_len, "train_loss": train_loss, "train_seconds": round(elapsed, 2),
                       "steps_per_sec": round(done / max(time.perf_counter() - t_start, 1e-9), 3) if done else None,
                       "world_size": world, "params": sum(p.numel() for p in model.parameters())})
        if args.task == "copy" and args.transfer:
            lens = transfer_lengths(args.transfer)
            res = copy_transfer(model, lens, args.transfer_size, args.batch_size, args.input, seed=20_000 + args.seed, device=device)
            result["transfer"] = {str(T): {k: round(v, 5) for k, v in m.items()} for T, m in res.items()}
        plot_curve(rows, os.path.join(args.out, "curve.png"), f"{args.task} T={args.seq_len} {args.model}")
        build, task_info = model_description(vars(args), task)
        save_model(os.path.join(args.out, "model.pt"), model, build, task_info, metrics=result,
                   train_args=dict(vars(args)))
        atomic_write(os.path.join(args.out, "final.json"), lambda f: f.write(json.dumps(result, indent=1).encode("utf-8")))
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
