"""Command line of the benchmark: `python -m sab_kernels.bench [--quick] [--out DIR] [--device cpu|cuda]`."""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from typing import List, Optional

SECTIONS = ("op", "overhead", "lstm")


def _ints(text: str) -> List[int]:
    return [int(x) for x in text.split(",") if x]


def _names(text: str) -> List[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m sab_kernels.bench",
        description="Benchmark the SAB sparse-attention op against the eager reference, torch.compile of the reference "
        "and a dense torch.topk baseline (each verified against the reference first); the op's per-call overhead; "
        "and SAB-LSTM training against nn.LSTM with full BPTT. Writes results.md, results.csv and PNG plots.",
    )
    p.add_argument("--quick", action="store_true", help="small sizes: about a minute on a 2-core CPU")
    p.add_argument("--out", default=None, help="output folder (default runs/bench/<device>, or <device>-quick; the "
                                                 "committed results live in bench/results/<device>)")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda if available, else cpu")
    p.add_argument("--sections", type=_names, default=list(SECTIONS), help=f"comma list from {','.join(SECTIONS)}")
    p.add_argument("--impls", type=_names, default=None, help="comma list from fused,eager,compiled,dense (default all)")
    p.add_argument("--sweeps", type=_names, default=None, help="op sweeps to run, from T,B,D,k_top,dtype (default all)")
    p.add_argument("--T", dest="T_values", type=_ints, default=None, help="T values of the op's T sweep, e.g. 64,1024")
    p.add_argument("--lstm-T", dest="lstm_T", type=_ints, default=None, help="sequence lengths of the LSTM section")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's default)")
    p.add_argument("--limit-s", type=float, default=30.0,
                   help="once one call of an implementation takes longer than this, skip it at larger sizes of that sweep")
    p.add_argument("--peak-bandwidth", type=float, default=None, help="CUDA: device bandwidth in GB/s for the roofline "
                   "column (default: from the device properties)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNGs")
    args = p.parse_args(argv)
    bad = set(args.sections) - set(SECTIONS)
    if bad:
        p.error(f"unknown section(s) {sorted(bad)}; choose from {SECTIONS}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    import torch
    from tqdm import tqdm

    from . import report, timing
    from .registry import implementations, op_cases
    from .memory import MemoryMeter
    from .runner import run_op
    from .sections import load_sablstm, lstm_models, lstm_setup, run_lstm, run_overhead

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch.cuda.is_available() is False", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    out_dir = args.out or os.path.join("runs", "bench", device + ("-quick" if args.quick else ""))
    # The missing-C++ fallback is reported once in the notes and the table labels, not per call.
    warnings.filterwarnings("ignore", message="sab_kernels: the compiled CPU kernels are not available")
    cfg = timing.QUICK if args.quick else timing.FULL

    peak_bw = copy_bw = None
    if device == "cuda":
        peak_bw = args.peak_bandwidth * 1e9 if args.peak_bandwidth else report.peak_bandwidth_bytes_per_s()
        copy_bw = report.measured_copy_bandwidth()
    env = report.environment(device, peak_bw, copy_bw)
    notes: List[str] = []
    if "BUSY" in env["load average at start"] and torch.get_num_threads() > 1:
        busy = (f"BUSY machine: load average {env['load average at start'].split()[0]} on {os.cpu_count()} cores at the start. "
                f"With {torch.get_num_threads()} torch threads competing with other processes, OpenMP threads wait on "
                "each other and multi-threaded ops can be slowed many times over, which distorts every comparison. "
                "Rerun on a quiet machine, or with --threads 1.")
        notes.append(busy)
        print(f"warning: {busy}", file=sys.stderr)

    # Plan everything first, so the progress bar knows its length.
    cases, impls = [], []
    if "op" in args.sections:
        impls, impl_notes = implementations(device, args.impls)
        notes += impl_notes
        cases = op_cases(device, args.quick, args.T_values, args.sweeps)
    n_op = sum(len(impls) * len(c.modes) for c in cases)
    n_overhead = (7 + 2 * (load_sablstm()[0] is not None)) if "overhead" in args.sections else 0
    n_lstm = 0
    if "lstm" in args.sections:
        lstm_cfg, lstm_T = lstm_setup(args.quick, args.lstm_T)
        n_lstm = len(lstm_models(device, lstm_cfg)[0]) * len(lstm_T)
    notes.append("time: " + ("triton.testing.do_bench (median, 25th/75th percentiles)" if device == "cuda"
                             else f"time.perf_counter loop, >= {cfg.min_reps} runs and >= {cfg.budget_s:g} s after "
                                  f"{cfg.warmup} warm-up run(s), median and IQR")
                 + "; forward = a training forward (inputs require grad); backward = backward alone after an untimed forward.")
    if device == "cuda":
        notes.append("roofline: minimum bytes (forward: query, w, every key once, the selected value rows, the outputs; "
                     "backward: the dense key/value gradients written once plus the selected rows) / median time / peak bandwidth.")

    memory = MemoryMeter(device, torch.get_num_threads())
    notes.append("peak memory: " + memory.method + (f" (the RSS worker did not start: {memory.last_error})" if memory.last_error else ""))
    rows = []
    bar = tqdm(total=n_op + n_overhead + n_lstm, desc="sab-bench", unit="run", file=sys.stderr, mininterval=0.5,
               dynamic_ncols=True)

    def progress(desc: str):
        bar.set_postfix_str(desc, refresh=False)
        bar.update(1)

    try:
        if cases:
            rows += run_op(cases, impls, device, cfg, peak_bw, args.limit_s, progress, memory)
        if "overhead" in args.sections:
            rows += run_overhead(device, args.quick, progress)
        if "lstm" in args.sections:
            lstm_rows, lstm_notes = run_lstm(device, args.quick, cfg, args.lstm_T, args.limit_s, progress, memory)
            rows += lstm_rows
            notes += lstm_notes
    finally:
        bar.close()
        memory.close()

    wall = time.perf_counter() - t_start
    env["wall time"] = f"{wall:.0f} s"
    text, paths = report.write_all(out_dir, rows, env, notes, with_plots=not args.no_plots)
    print(text)
    print(f"wrote {', '.join(paths)} in {wall:.0f} s", file=sys.stderr)
    failed = [r for r in rows if r["status"] == "FAIL"]
    if failed:
        print(f"error: {len(failed)} measurement(s) skipped because verification against the reference failed",
              file=sys.stderr)
        return 1
    return 0
