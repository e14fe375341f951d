"""`python -m sab_kernels.demo` (`make demo`): the main job in one command, a few minutes on a laptop CPU.

1. Train SAB and truncated BPTT on a small copy-memory task and print both results side by side
   (`sab_kernels/training/demo.py`; learning curves in OUT/demo_copy.png).
2. Benchmark the op against the eager reference, torch.compile of the reference and a dense topk baseline
   (`python -m sab_kernels.bench --quick`; tables, CSV and plots in OUT/bench).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sab_kernels.demo", description=__doc__.split("\n")[0])
    p.add_argument("--out", default=os.path.join("runs", "demo"), help="output folder (default runs/demo)")
    p.add_argument("--steps", type=int, default=1600, help="training steps per model (default 1600)")
    a = p.parse_args(argv)

    from .bench import main as bench_main
    from .training.demo import run_demo

    print("== 1/2  train: SAB vs truncated BPTT on the copy task ==", flush=True)
    run_demo(a.out, a.steps)
    print("\n== 2/2  benchmark: the fused op vs the baselines (quick sizes) ==", flush=True)
    return bench_main(["--quick", "--out", os.path.join(a.out, "bench")])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
