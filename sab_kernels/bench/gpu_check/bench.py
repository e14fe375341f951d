"""Step 2: the quick op benchmark (`python -m sab_kernels.bench`) in a subprocess, read back from its CSV.

The benchmark verifies every implementation against the reference before timing it (status FAIL and exit
status 1 on a mismatch), writes the bandwidth-roofline column on CUDA and peak memory per implementation.
"""

from __future__ import annotations

import csv
import os
import shlex
import subprocess
import sys
from typing import Dict, List, Optional, Tuple

from .config import CheckConfig
from .steps import StepResult

# HBM peak of common parts (GB/s, vendor data sheets), for when the device properties lack bus width / clock.
KNOWN_PEAK_GBPS = (("H200", 4800), ("H100 NVL", 3900), ("H100 PCIe", 2000), ("H100", 3350), ("GH200", 4000),
                   ("A100-SXM4-80GB", 2039), ("A100 80GB PCIe", 1935), ("A100", 1555), ("L40S", 864), ("A10", 600))

NUMERIC = ("B", "T", "D", "H", "k_top", "median_ms", "p25_ms", "p75_ms", "reps", "peak_mem_mib", "min_bytes",
           "bandwidth_frac")


def peak_bandwidth(cfg: CheckConfig) -> Tuple[Optional[float], str]:
    """(bytes/s, where the number comes from) of the GPU's memory; (None, why) on CPU or when unknown."""
    if cfg.peak_bandwidth:
        return cfg.peak_bandwidth, "--peak-bandwidth"
    if cfg.device != "cuda":
        return None, "CPU mode: no HBM roofline"
    import torch

    from ..report import peak_bandwidth_bytes_per_s

    bw = peak_bandwidth_bytes_per_s(0)
    if bw:
        return bw, "2 x bus width x memory clock (device properties)"
    name = torch.cuda.get_device_name(0)
    for part, gbps in KNOWN_PEAK_GBPS:
        if part in name:
            return gbps * 1e9, f"data sheet of {part} (device properties lack bus width / clock)"
    return None, f"unknown for {name!r}: pass --peak-bandwidth GB/s"


def run_bench(cfg: CheckConfig, root: str, out_dir: str, env: dict) -> StepResult:
    bench_dir = os.path.join(out_dir, "bench")
    bw, bw_source = peak_bandwidth(cfg)
    cmd = [sys.executable, "-m", "sab_kernels.bench", "--device", cfg.device, *cfg.bench_args, "--out", bench_dir]
    if bw:
        cmd += ["--peak-bandwidth", f"{bw / 1e9:.1f}"]
    shown = shlex.join(["python", *cmd[1:]])
    try:
        proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=cfg.bench_timeout_s)
    except subprocess.TimeoutExpired:
        return StepResult("benchmark", False, f"timed out after {cfg.bench_timeout_s} s", f"`{shown}`")
    with open(os.path.join(out_dir, "bench.log"), "w") as f:
        f.write(proc.stdout + proc.stderr)
    rows = read_rows(os.path.join(bench_dir, "results.csv"))
    failed = [r for r in rows if r["status"] == "FAIL"]
    errors = [r for r in rows if r["status"] in ("error", "OOM")]
    ok = proc.returncode == 0 and bool(rows) and not failed
    summary = (f"{len(rows)} measurements, {len(failed)} verification failures, {len(errors)} errors "
               f"(exit status {proc.returncode})")
    md_path = os.path.join(bench_dir, "results.md")
    details = f"`{shown}`; peak bandwidth: {bw / 1e9:.0f} GB/s, {bw_source}" if bw else f"`{shown}`; roofline: {bw_source}"
    if proc.returncode != 0 and not rows:
        details += f"\n\n```\n{(proc.stdout + proc.stderr)[-3000:]}\n```"
    for r in failed + errors:
        details += f"\n- {r['status']}: {r['impl_label']} {r['mode']} at {r['case']}: {r['note']}"
    text = open(md_path).read() if os.path.exists(md_path) else ""
    return StepResult("benchmark", ok, summary, details, data={"rows": rows, "markdown": text, "dir": bench_dir})


def read_rows(path: str) -> List[Dict]:
    """The benchmark's CSV (environment in '# ' lines first) as dicts, numbers as floats where they are numbers."""
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        lines = [line for line in f if not line.startswith("# ")]
    rows = list(csv.DictReader(lines))
    for r in rows:
        for key in NUMERIC:
            try:
                r[key] = float(r[key]) if r.get(key) not in (None, "") else ""
            except ValueError:
                pass
        for key in ("B", "T", "D", "H", "k_top"):
            if isinstance(r.get(key), float) and r[key].is_integer():
                r[key] = int(r[key])
    return rows
