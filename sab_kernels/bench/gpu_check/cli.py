"""Command line of the GPU check: `python -m sab_kernels.bench.gpu_check [--cpu] --out DIR`."""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import List, Optional

STEPS = ("tests", "bench", "model", "copy")


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m sab_kernels.bench.gpu_check",
        description="Validate a GPU machine: every CUDA test, the quick CUDA benchmark (verified against the reference, "
        "bandwidth roofline, peak memory), an SAB-LSTM training step against cuDNN nn.LSTM, the module's host syncs, "
        "and a short copy-task run; one Markdown report, a CSV and PNGs in --out, with a verdict per GPU target. "
        "Exit status 1 on any mismatch against the reference or a broken step.",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--cpu", action="store_true",
                   help="CPU mode: tiny sizes, Triton in the interpreter (TRITON_INTERPRET=1); what CI runs")
    p.add_argument("--skip", default="", help=f"comma list of steps to skip, from {','.join(STEPS)}")
    p.add_argument("--peak-bandwidth", type=float, default=None,
                   help="GPU memory bandwidth in GB/s for the roofline (default: device properties, then a data-sheet table)")
    args = p.parse_args(argv)
    args.skip = [s.strip() for s in args.skip.split(",") if s.strip()]
    bad = set(args.skip) - set(STEPS)
    if bad:
        p.error(f"unknown step(s) {sorted(bad)} in --skip; choose from {','.join(STEPS)}")
    if args.peak_bandwidth is not None and args.peak_bandwidth <= 0:
        p.error(f"--peak-bandwidth must be > 0 GB/s, got {args.peak_bandwidth}")
    return args


def repo_root() -> str:
    """The checkout this package runs from (the tests live there): sab_kernels/bench/gpu_check/../../.."""
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if args.cpu:  # before anything imports triton: the kernels are decorated for the interpreter
        os.environ["TRITON_INTERPRET"] = "1"
    import dataclasses

    import torch

    from ..report import environment
    from .bench import peak_bandwidth, run_bench
    from .config import cpu_config, gpu_config
    from .copy_check import run_copy
    from .model import run_model
    from .report import write_all
    from .steps import StepResult, run_step
    from .tests import run_tests
    from .verdicts import judge

    if not args.cpu and not torch.cuda.is_available():
        print("error: no CUDA device (torch.cuda.is_available() is False); on a CPU machine run with --cpu",
              file=sys.stderr)
        return 2
    cfg = cpu_config() if args.cpu else gpu_config()
    if args.peak_bandwidth:
        cfg = dataclasses.replace(cfg, peak_bandwidth=args.peak_bandwidth * 1e9)
    root = repo_root()
    out_dir = os.path.abspath(args.out)
    os.makedirs(out_dir, exist_ok=True)
    sub_env = dict(os.environ)
    sub_env["PYTHONPATH"] = root + (os.pathsep + sub_env["PYTHONPATH"] if sub_env.get("PYTHONPATH") else "")
    t0 = time.perf_counter()

    steps: List[StepResult] = []
    if "tests" not in args.skip:
        if os.path.isdir(os.path.join(root, "tests")):
            steps.append(run_step("tests", lambda: run_tests(cfg, root, out_dir, sub_env)))
        else:
            steps.append(StepResult("tests", False, f"no tests/ folder next to the package ({root}): run from a checkout"))
    if "bench" not in args.skip:
        steps.append(run_step("benchmark", lambda: run_bench(cfg, root, out_dir, sub_env)))
    if "model" not in args.skip:
        steps.append(run_step("sab-lstm", lambda: run_model(cfg)))
    if "copy" not in args.skip:
        steps.append(run_step("copy-task", lambda: run_copy(cfg)))
    bench = next((s for s in steps if s.name == "benchmark"), None)
    verdicts = judge(bench.data.get("rows", []) if bench else [], cfg)

    env = environment(cfg.device, peak_bandwidth(cfg)[0])
    env["command"] = " ".join(["python", "-m", "sab_kernels.bench.gpu_check", *(argv if argv is not None else sys.argv[1:])])
    env["mode"] = "CPU mode (tiny sizes, Triton interpreter)" if args.cpu else "GPU"
    env["wall time"] = f"{time.perf_counter() - t0:.0f} s"
    passed = all(s.ok for s in steps)
    paths = write_all(out_dir, env, steps, verdicts, args.cpu, passed)
    for v in verdicts:
        print(f"target: {v.status:8s} {v.target}: {v.values}")
    print(f"gpu-check: {'PASS' if passed else 'FAIL'} in {time.perf_counter() - t0:.0f} s; wrote {', '.join(paths)}")
    return 0 if passed else 1
