"""SAB against truncated BPTT on a copy task small enough for a laptop CPU (`run_demo`; its command line is
`python -m sab_kernels.train_demo`, and `make demo` runs it too).

Trains the same SAB-LSTM twice on copy memory with delay T (default 10: sequences of 30 steps), once with
sparse attentive backtracking (k_top 5, k_att 1, k_trunc 5) and once as truncated BPTT (no memory, k_trunc
5), prints both results side by side (last-10 accuracy as a fraction, chance 0.125) and writes the learning
curves to OUT/demo_copy.png (plus each run's metrics.csv under OUT/sab and OUT/tbptt).
"""

from __future__ import annotations

import json
import os

from .args import parse_args
from .loop import run
from .records import read_rows

PAPER = "paper (T=100, GPU-scale training): TBPTT k_trunc=5 31%, SAB k_trunc=5 k_top=5 100%"


def _plot(results: dict, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for model, rows in results.items():
        steps = [r["step"] for r in rows]
        axes[0].plot(steps, [r["acc10"] for r in rows], marker=".", label=model)
        axes[1].plot(steps, [r["ce10"] for r in rows], marker=".", label=model)
    axes[0].axhline(0.125, color="gray", ls=":", label="chance")
    axes[0].set_ylabel("last-10 accuracy")
    axes[1].set_ylabel("last-10 cross-entropy")
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_demo(out: str = os.path.join("runs", "demo"), steps: int = 1600, seq_len: int = 10, lr: float = 3e-3,
             seed: int = 0, backend: str = "auto", threads: int = 1, progress: bool = True) -> dict:
    """Train both models into OUT/sab and OUT/tbptt (replacing earlier demo runs there), print the table and one
    JSON line, and return that summary."""
    results, finals = {}, {}
    for model in ("sab", "tbptt"):
        argv_run = ["copy", "--model", model, "--seq-len", str(seq_len), "--steps", str(steps), "--lr", str(lr),
                    "--k-top", "5", "--k-att", "1", "--k-trunc", "5", "--hidden", "64", "--batch-size", "64",
                    "--eval-every", str(max(steps // 10, 1)), "--seed", str(seed), "--backend", backend,
                    "--threads", str(threads), "--out", os.path.join(out, model), "--overwrite"]
        if not progress:
            argv_run.append("--no-progress")
        args = parse_args(argv_run)
        finals[model] = run(args)
        results[model] = read_rows(os.path.join(args.out, "metrics.csv"))
    plot = os.path.join(out, "demo_copy.png")
    _plot(results, plot, f"copy T={seq_len}: SAB vs truncated BPTT ({steps} steps)")
    print(f"\ncopy memory, T={seq_len} (sequence {seq_len + 20}), hidden 64, batch 64, {steps} Adam steps, lr {lr}")
    print("| model | acc10 (final) | ce10 (final) | best acc10 (any eval) | train time (s) | steps/s |")
    print("|---|---|---|---|---|---|")
    for model, label in (("sab", "SAB (k_top 5, k_att 1, k_trunc 5)"), ("tbptt", "truncated BPTT (k_trunc 5)")):
        f, best = finals[model], max(r["acc10"] for r in results[model])
        print(f"| {label} | {f['acc10']:.3f} | {f['ce10']:.3f} | {best:.3f} | {f['train_seconds']:.0f} | {f['steps_per_sec']} |")
    print(f"chance acc10 = 0.125; {PAPER}")
    print(f"learning curves: {plot}")
    summary = {"task": "copy", "seq_len": seq_len, "steps": steps,
               "sab": {k: finals["sab"][k] for k in ("acc10", "ce10")},
               "tbptt": {k: finals["tbptt"][k] for k in ("acc10", "ce10")}, "plot": plot}
    print(json.dumps(summary), flush=True)
    return summary
