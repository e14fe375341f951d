"""`python -m sab_kernels.train_demo`: SAB against truncated BPTT on a copy task small enough for a laptop CPU.

The command line of sab_kernels/training/demo.py (`run_demo`): trains SAB (k_top 5, k_att 1, k_trunc 5) and
truncated BPTT (k_trunc 5) on copy memory with delay T, prints both side by side and writes the learning curves to
OUT/demo_copy.png. A few minutes on one CPU core; the gap opens because the digits sit T + 10 steps before they
are asked for, beyond k_trunc.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

from .training.demo import run_demo


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
    return run_demo(a.out, a.steps, a.seq_len, a.lr, a.seed, a.backend, a.threads, progress=not a.no_progress)


if __name__ == "__main__":
    main(sys.argv[1:])
