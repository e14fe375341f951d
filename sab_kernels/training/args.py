"""sab-train's arguments: the parser and every check, run before any work (`parse_args`).

A bad argument raises ValueError with one line naming it (`check_args`), which `parse_args` turns into
`sab-train: error: ...` and exit status 2; checking reads files (the data, the checkpoint to resume) and writes
nothing.
"""

from __future__ import annotations

import argparse
import math
import os
from typing import List, Optional

import torch

from ..kernels import triton_interpreter_enabled
from ..nn import MODEL_KINDS
from ..tasks import TASKS, make_task
from .checkpoint import OUTPUTS, RESUME_MUST_MATCH, load_checkpoint, resume_mismatches

DESCRIPTION = "`python -m sab_kernels.train TASK [options]` (console script `sab-train`): train a model on a SAB task."
BACKENDS = ("auto", "cpu", "triton", "reference")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sab-train", description=DESCRIPTION,
                                epilog="Bad arguments exit with status 2 before any work; nothing is written.")
    p.add_argument("task", choices=TASKS)
    p.add_argument("--model", choices=MODEL_KINDS, default="sab",
                   help="sab | tbptt (no memory) | bptt (no truncation, no memory) | dense (softmax over all slots) | "
                        "lstm (torch.nn.LSTM) | sab-gru (SAB on a GRU cell) | gru (torch.nn.GRU)")
    p.add_argument("--num-layers", type=int, default=1, help="stacked recurrent layers")
    p.add_argument("--init", default=None,
                   help="start from the weights of this model file (fine-tuning: another T or a bounded memory)")
    p.add_argument("--dropout", type=float, default=0.0, help="dropout between layers (training only)")
    p.add_argument("--recent-slots", type=int, default=None,
                   help="bounded memory: the W most recent slots (with --relevant-slots; default unbounded)")
    p.add_argument("--relevant-slots", type=int, default=None,
                   help="bounded memory: up to M older slots kept for the attention they received")
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
    p.add_argument("--flush-denormal", action="store_true",
                   help="torch.set_flush_denormal(True): numbers below 1.2e-38 (float32) become 0. On CPUs with slow "
                        "subnormal arithmetic, backward passes through hundreds of steps run up to 8x faster "
                        "(bench/results/training/mnist5k_seq_h128/README.md)")
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


def _check_init(args) -> None:
    """--init: a readable model file whose weights fit the model these arguments build."""
    from .model_file import init_weights

    if not os.path.isfile(args.init):
        raise ValueError(f"--init {args.init}: no such model file")
    try:
        weights = init_weights(args.init)
    except Exception as exc:  # noqa: BLE001 - unreadable files of every kind
        raise ValueError(f"--init {args.init}: not a readable sab-kernels model file ({exc})") from None
    from ..nn import build_model
    from ..tasks import make_task

    task = make_task(args.task, args.seq_len, args.input, args.data, not args.no_permute, args.seed)
    model = build_model(args.model, task.input_size, args.hidden, task.output_size, args.k_top, args.k_att,
                        args.k_trunc or None, args.attn_dim, "cpu", eps=args.eps, num_layers=args.num_layers,
                        dropout=args.dropout, recent_slots=args.recent_slots, relevant_slots=args.relevant_slots)
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise ValueError(f"--init {args.init}: its weights do not fit --model {args.model} --hidden {args.hidden} "
                         f"--num-layers {args.num_layers}: {first[1].strip() if len(first) > 1 else first[0]}") from None


def _check_numbers(args) -> None:
    at_least = [("--seq-len", args.seq_len, 1), ("--k-top", args.k_top, 1 if args.model in ("sab", "sab-gru") else 0),
                ("--k-att", args.k_att, 1), ("--k-trunc", args.k_trunc, 0), ("--hidden", args.hidden, 1),
                ("--batch-size", args.batch_size, 1), ("--steps", args.steps, 0), ("--eval-every", args.eval_every, 1),
                ("--eval-size", args.eval_size, 1), ("--transfer-size", args.transfer_size, 1), ("--warmup", args.warmup, 0),
                ("--memory-window", args.memory_window, 0), ("--num-layers", args.num_layers, 1)]
    if (args.recent_slots is None) != (args.relevant_slots is None):
        raise ValueError("--recent-slots and --relevant-slots go together (neither: the unbounded memory)")
    if args.recent_slots is not None:
        at_least += [("--recent-slots", args.recent_slots, 1), ("--relevant-slots", args.relevant_slots, 0)]
        if args.model in ("lstm", "gru", "tbptt", "bptt"):
            raise ValueError(f"--recent-slots bounds the memory, and --model {args.model} has none")
    if not (math.isfinite(args.dropout) and 0 <= args.dropout < 1):
        raise ValueError(f"--dropout must be in [0, 1), got {args.dropout}")
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
        diff = resume_mismatches(load_checkpoint(ckpt_path)["args"], vars(args))
        if diff:
            raise ValueError(f"--resume: {ckpt_path} was trained with other settings ({'; '.join(diff)}); "
                             "rerun with the checkpoint's values, or use a new --out")


def check_args(args: argparse.Namespace) -> None:
    """Raise ValueError (one line) for the first bad argument; reads files, writes nothing."""
    _check_data(args)  # first: the input a long run would otherwise fail on only when it gets there
    _check_numbers(args)
    if args.init is not None:
        _check_init(args)
    if args.stateful and args.task != "chars":
        raise ValueError(f"--stateful applies to the chars task only, not {args.task}")
    if args.stateful and (args.num_layers > 1 or args.model in ("sab-gru", "gru") or args.recent_slots is not None):
        raise ValueError("--stateful carries one-layer LSTM states with an unbounded memory only "
                         "(not --num-layers > 1, --model sab-gru/gru or --recent-slots)")
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
