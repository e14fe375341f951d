"""A bounded SAB memory against the unbounded one and torch.nn.LSTM as T grows, every model timed side by side in
one run: `python -m sab_kernels.bench.lstm_bounded [--quick] [--out DIR] [--threads 1]`.

Models (one layer, B = 16, H = 128, input size H, a linear head of 10 classes on every step; k_top = 5,
k_att = 2, k_trunc = 5, the fused C++ path):
    nn.LSTM        torch.nn.LSTM, full BPTT
    SAB            SABLSTM with the paper's unbounded memory (every step scores every slot: O(T^2))
    SAB W=M=32     SABLSTM(recent_slots=32, relevant_slots=32): every step scores at most 64 slots
Rows: T = 1000, 4096, 16384; "train" = forward, cross-entropy at every step, backward, Adam step; "infer" =
forward under no_grad; "peak" = the resident-set growth of one training step, in a fresh process. The
unbounded SAB runs up to --unbounded-max-T (default 4096: at 16384 one training step takes minutes).

Writes lstm_bounded.csv, lstm_bounded.md (the table, ratios to nn.LSTM, the issue's targets) and
lstm_bounded.png into --out.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

from . import lstm_table, timing
from .lstm_state import _status_kib

B, H, CLASSES, K_TOP, K_ATT, K_TRUNC, W, M = 16, 128, 10, 5, 2, 5, 32, 32
LENGTHS = (1000, 4096, 16384)
QUICK_LENGTHS = (200, 800)
MODELS = ("nn.LSTM", "SAB", f"SAB W=M={W}")
BOUNDED = MODELS[2]
# The targets at T = 4096 (time / nn.LSTM), and the flatness of the bounded per-step time.
TARGETS = {"train": 2.5, "infer": 2.0}
FLAT = 1.3


def build(name: str) -> nn.Module:
    from ..nn import build_model

    torch.manual_seed(0)
    if name == "nn.LSTM":
        return build_model("lstm", H, H, CLASSES)
    bounds = dict(recent_slots=W, relevant_slots=M) if name == BOUNDED else {}
    model = build_model("sab", H, H, CLASSES, k_top=K_TOP, k_att=K_ATT, k_trunc=K_TRUNC, backend="cpu", **bounds)
    model.core.path = "fused"
    return model


def step_fn(model: nn.Module, T: int, mode: str):
    """One training step or one inference of `model` at (T, B, H), as lstm_table times them."""
    return lstm_table.step_fn(model, T, B, H, mode)


def _peak_worker(spec: dict) -> int:
    """In a fresh process: the peak resident-set growth in bytes of one training step (after a warm-up one)."""
    torch.set_num_threads(spec["threads"])
    fn = step_fn(build(spec["model"]), spec["T"], "train")
    fn()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the high-water mark to the current resident set
    before = _status_kib("VmHWM")
    fn()
    return (_status_kib("VmHWM") - before) * 1024


def peak_bytes(model: str, T: int, threads: int) -> int:
    # Allocations of 64 KiB and more get their own mmap, so the high-water mark counts what is really live.
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    spec = json.dumps(dict(model=model, T=T, threads=threads))
    done = subprocess.run([sys.executable, "-m", "sab_kernels.bench.lstm_bounded", "--worker", spec], env=env,
                          check=True, capture_output=True, text=True)
    return int(done.stdout.strip().splitlines()[-1])


def run(lengths: Sequence[int], cfg: timing.TimingConfig, threads: int, unbounded_max_T: int, progress=None) -> List[Dict]:
    rows = []
    for T in lengths:
        for name in MODELS:
            if name == "SAB" and T > unbounded_max_T:
                continue
            row = dict(T=T, B=B, H=H, model=name)
            for mode in ("train", "infer"):
                if progress:
                    progress(f"T={T} {mode} {name}")
                row[f"{mode}_ms"] = timing.time_cpu(step_fn(build(name), T, mode), cfg=cfg).median_ms
            if progress:
                progress(f"T={T} peak {name}")
            row["peak_MiB"] = peak_bytes(name, T, threads) / 2**20
            rows.append(row)
    return rows


def _get(rows, T, model, key):
    return next((r[key] for r in rows if r["T"] == T and r["model"] == model), None)


def table(rows: List[Dict]) -> str:
    lines = ["| T | model | train | infer | peak memory (train) | train per step |", "|---|---|---|---|---|---|"]
    for r in rows:
        cells = []
        for key, unit in (("train_ms", "ms"), ("infer_ms", "ms"), ("peak_MiB", "MiB")):
            base = _get(rows, r["T"], "nn.LSTM", key)
            ratio = f" ({r[key] / base:.2f}x)" if r["model"] != "nn.LSTM" and base else ""
            cells.append(f"{r[key]:.1f} {unit}{ratio}")
        cells.append(f"{1e3 * r['train_ms'] / r['T']:.1f} us")
        lines.append(f"| {r['T']} | {r['model']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdicts(rows: List[Dict], lengths: Sequence[int]) -> List[str]:
    out = []
    T = 4096 if 4096 in lengths else lengths[-1]
    for mode, limit in TARGETS.items():
        a, b = _get(rows, T, BOUNDED, f"{mode}_ms"), _get(rows, T, "nn.LSTM", f"{mode}_ms")
        if a and b:
            out.append(f"{BOUNDED} {mode} at T={T}: {a / b:.2f}x nn.LSTM (target <= {limit}x): "
                       f"{'met' if a / b <= limit else 'NOT met'}")
    short, long = lengths[0], lengths[-1]
    for mode in ("train", "infer"):
        a, b = _get(rows, long, BOUNDED, f"{mode}_ms"), _get(rows, short, BOUNDED, f"{mode}_ms")
        if a and b:
            ratio = (a / long) / (b / short)
            out.append(f"{BOUNDED} {mode} time per step at T={long} / at T={short}: {ratio:.2f} (target <= {FLAT}): "
                       f"{'met' if ratio <= FLAT else 'NOT met'}")
    return out


def plot(rows: List[Dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    for ax, (key, label) in zip(axes, (("train_ms", "training step: us per time step"),
                                       ("infer_ms", "inference: us per time step"), ("peak_MiB", "peak memory, MiB"))):
        for name in MODELS:
            pts = [(r["T"], r[key] * (1e3 / r["T"] if key != "peak_MiB" else 1)) for r in rows if r["model"] == name]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=name)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("T")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"bounded vs unbounded SAB vs nn.LSTM (B={B}, H={H}, one thread; lower is better)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Optional[Sequence[str]] = None) -> int:
    if argv is None and len(sys.argv) == 3 and sys.argv[1] == "--worker":
        print(_peak_worker(json.loads(sys.argv[2])))
        return 0
    p = argparse.ArgumentParser(prog="python -m sab_kernels.bench.lstm_bounded", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help=f"T = {QUICK_LENGTHS} (seconds)")
    p.add_argument("--out", default=None, help="output folder (default bench/results/cpu-lstm-table[-quick])")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1, as the targets say)")
    p.add_argument("--unbounded-max-T", type=int, default=4096, help="time the unbounded SAB up to this T")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.threads < 1:
        p.error(f"--threads must be >= 1, got {args.threads}")
    from ..kernels import sab_lstm_fused

    reason = sab_lstm_fused.unsupported_reason(torch.zeros(1), bounded=True)
    if reason is not None:
        p.error(f"the fused SAB path is unavailable: {reason}")
    out = args.out or os.path.join("bench", "results", "cpu-lstm-table" + ("-quick" if args.quick else ""))
    torch.set_num_threads(args.threads)
    lengths = QUICK_LENGTHS if args.quick else LENGTHS
    cfg = timing.QUICK if args.quick else timing.TimingConfig(warmup=1, min_reps=3, max_reps=10, budget_s=2.0)
    bar = None
    if not args.no_progress:
        from tqdm import tqdm

        total = sum(3 * sum(1 for m in MODELS if not (m == "SAB" and T > args.unbounded_max_T)) for T in lengths)
        bar = tqdm(total=total, desc="bounded memory", file=sys.stderr)

    def progress(desc):
        if bar is not None:
            bar.set_postfix_str(desc)
            bar.update(1)

    rows = run(lengths, cfg, args.threads, args.unbounded_max_T, progress)
    if bar is not None:
        bar.close()
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "lstm_bounded.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    text = (f"# Bounded vs unbounded SAB vs nn.LSTM, {args.threads} thread(s), torch {torch.__version__}\n\n"
            f"Command: `python -m sab_kernels.bench.lstm_bounded{' --quick' if args.quick else ''} --threads {args.threads}`. "
            f"Median of repeated calls, every model timed in this one run; ratios are to nn.LSTM on the same T. "
            f"B={B}, H={H}, k_top={K_TOP}, k_att={K_ATT}, k_trunc={K_TRUNC}, fused C++ path, {CLASSES}-class head on "
            f"every step. Peak memory: resident-set growth of one training step in a fresh process. The unbounded SAB "
            f"runs up to T={args.unbounded_max_T}.\n\n" + table(rows) + "\n\n" + "\n".join(f"- {v}" for v in verdicts(rows, lengths)) + "\n")
    with open(os.path.join(out, "lstm_bounded.md"), "w") as f:
        f.write(text)
    plot(rows, os.path.join(out, "lstm_bounded.png"))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
