"""`python -m sab_kernels.train_demo`: SAB against truncated BPTT on a copy task small enough for a laptop CPU.

Trains the same SAB-LSTM twice on copy memory with delay T (default 10: sequences of 30 steps), once with
sparse attentive backtracking (k_top 5, k_att 1, k_trunc 5) and once as truncated BPTT (no memory, k_trunc
5), prints both results side by side (last-10 accuracy as a fraction, chance 0.125) and writes the learning
curves to OUT/demo_copy.png (plus each run's metrics.csv under OUT/sab and OUT/tbptt). A few minutes on one
CPU core; the gap opens because the digits sit T + 10 steps before they are asked for, beyond k_trunc.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List, Optional

from .training.args import parse_args
from .training.loop import run
from .training.records import read_rows

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


def main(argv: Optional[List[str]] = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m sab_kernels.train_demo", description=__doc__.split("\n")[0])
    p.add_argument("--seq-len", type=int, default=10)
    p.add_argument("--steps", type=int, default=1600)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", default="auto")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=os.path.join("runs", "demo"))
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    results, finals = {}, {}
    for model in ("sab", "tbptt"):
        argv_run = ["copy", "--model", model, "--seq-len", str(a.seq_len), "--steps", str(a.steps), "--lr", str(a.lr),
                    "--k-top", "5", "--k-att", "1", "--k-trunc", "5", "--hidden", "64", "--batch-size", "64",
                    "--eval-every", str(max(a.steps // 10, 1)), "--seed", str(a.seed), "--backend", a.backend,
                    "--threads", str(a.threads), "--out", os.path.join(a.out, model), "--overwrite"]
        if a.no_progress:
            argv_run.append("--no-progress")
        args = parse_args(argv_run)
        finals[model] = run(args)
        results[model] = read_rows(os.path.join(args.out, "metrics.csv"))
    plot = os.path.join(a.out, "demo_copy.png")
    _plot(results, plot, f"copy T={a.seq_len}: SAB vs truncated BPTT ({a.steps} steps)")
    print(f"\ncopy memory, T={a.seq_len} (sequence {a.seq_len + 20}), hidden 64, batch 64, {a.steps} Adam steps, lr {a.lr}")
    print("| model | acc10 (final) | ce10 (final) | best acc10 (any eval) | train time (s) | steps/s |")
    print("|---|---|---|---|---|---|")
    for model, label in (("sab", "SAB (k_top 5, k_att 1, k_trunc 5)"), ("tbptt", "truncated BPTT (k_trunc 5)")):
        f, best = finals[model], max(r["acc10"] for r in results[model])
        print(f"| {label} | {f['acc10']:.3f} | {f['ce10']:.3f} | {best:.3f} | {f['train_seconds']:.0f} | {f['steps_per_sec']} |")
    print(f"chance acc10 = 0.125; {PAPER}")
    print(f"learning curves: {plot}")
    summary = {"task": "copy", "seq_len": a.seq_len, "steps": a.steps,
               "sab": {k: finals["sab"][k] for k in ("acc10", "ce10")},
               "tbptt": {k: finals["tbptt"][k] for k in ("acc10", "ce10")}, "plot": plot}
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
