"""Registers, spills and shared memory of the fused SAB-LSTM Triton kernels on sm_90, compiled ahead of time
with no GPU (by Triton's own ptxas, read back with its cuobjdump), at the tile sizes `sab_lstm_triton.blocks`
picks for a GPU:

    python -m sab_kernels.bench.triton_registers [--dtypes fp32,fp64] [--hidden 64,128,256]

D = H, k_top = 5. Prints a markdown table. Needs a Triton with the ahead-of-time API (3.7 to 3.9 here) and
TRITON_INTERPRET unset (the interpreter compiles nothing).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from typing import Dict, List, Optional, Sequence

FWD_POINTERS = ("g_ptr", "h0_ptr", "c0_ptr", "whh_ptr", "wq_ptr", "bq_ptr", "wm_ptr", "w_ptr", "val_ptr", "key_ptr",
                "out_ptr", "c_ptr", "tc_ptr", "hh_ptr", "q_ptr", "wts_ptr", "idx_ptr", "thr_ptr", "sum_ptr")
BWD_POINTERS = ("gout_ptr", "gh_ptr", "gc_ptr", "g_ptr", "c_ptr", "tc_ptr", "c0_ptr", "q_ptr", "idx_ptr", "thr_ptr",
                "val_ptr", "key_ptr", "whh_ptr", "wq_ptr", "wm_ptr", "w_ptr", "mv_ptr", "mk_ptr", "dg_ptr", "dq_ptr",
                "dh0_ptr", "dc0_ptr", "gwp_ptr")
INT_POINTERS = ("idx_ptr", "thr_ptr")


def _compile(fn, pointers, dtype: str, constexprs: dict, num_warps: int):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    sig = {}
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in pointers:
            sig[name] = "*i64" if name in INT_POINTERS else "*" + dtype
        else:
            sig[name] = "i32"
    attrs = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(fn.arg_names) if sig[name].startswith("*")}
    src = ASTSource(fn=fn, signature=sig, constexprs=constexprs, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps})


def _resource_usage(cubin: bytes) -> Dict[str, int]:
    """Registers, stack and local memory (spilled registers land there) per thread, from the cubin Triton built,
    read with the cuobjdump it ships (each Triton release's own ptxas made the cubin)."""
    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        done = subprocess.run([tool, "--dump-resource-usage", path], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"cuobjdump failed: {(done.stdout + done.stderr)[-2000:]}")
    usage = {k: int(v) for k, v in re.findall(r"\b(REG|STACK|LOCAL):(\d+)", done.stdout)}
    return dict(registers=usage["REG"], stack_bytes=usage["STACK"], local_bytes=usage["LOCAL"])


def report(dtypes: Sequence[str] = ("fp32",), hidden: Sequence[int] = (64, 128, 256), k_top: int = 5) -> List[Dict]:
    """One row per (dtype, H, kernel): registers, spill bytes, shared memory."""
    import triton
    import triton.language as tl

    from ..kernels import sab_lstm_triton
    from ..kernels.sab_lstm_triton_kernels import _sab_lstm_bwd_kernel, _sab_lstm_fwd_kernel

    rows = []
    for dtype in dtypes:
        acc = tl.float64 if dtype == "fp64" else tl.float32
        for H in hidden:
            bl = sab_lstm_triton.blocks(H, H, interpreted=False)
            k_pad = triton.next_power_of_2(k_top + 1)
            common = dict(H=H, D=H, H_PAD=bl["H_PAD"], D_PAD=bl["D_PAD"], MEM=True, K_PAD=k_pad, ACC=acc, EPS=1e-7)
            fwd = dict(common, K_TOP=k_top, BLOCK_T=bl["BLOCK_T"], BLOCK_D=bl["BLOCK_D"], BLOCK_H=bl["BLOCK_H"],
                       BLOCK_MV=bl["MV_FWD"], FP64=dtype == "fp64")
            bwd = dict(common, HAS_GOUT=True, BLOCK_MV=bl["MV_BWD"])
            for name, fn, pointers, consts, warps in (
                    ("forward", _sab_lstm_fwd_kernel, FWD_POINTERS, fwd, bl["WARPS_FWD"]),
                    ("backward", _sab_lstm_bwd_kernel, BWD_POINTERS, bwd, bl["WARPS_BWD"])):
                kernel = _compile(fn, pointers, dtype, consts, warps)
                rows.append(dict(dtype=dtype, H=H, kernel=name, num_warps=warps,
                                 shared_bytes=int(kernel.metadata.shared), **_resource_usage(kernel.asm["cubin"])))
    return rows


def table(rows: List[Dict]) -> str:
    import triton

    lines = [f"Triton {triton.__version__}, sm_90, k_top = 5; stack and local memory are per thread (spilled "
             "registers live there).", "",
             "| dtype | H = D | kernel | warps | registers | stack | local (spills) | shared |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['dtype']} | {r['H']} | {r['kernel']} | {r['num_warps']} | {r['registers']} | {r['stack_bytes']} B | "
              f"{r['local_bytes']} B | {r['shared_bytes']} B |" for r in rows]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sab_kernels.bench.triton_registers", description=__doc__.split("\n")[0])
    p.add_argument("--dtypes", default="fp32", help="comma-separated: fp32, fp64 (default fp32)")
    p.add_argument("--hidden", default="64,128,256", help="comma-separated H (= D) values")
    args = p.parse_args(argv)
    dtypes = args.dtypes.split(",")
    if any(d not in ("fp32", "fp64") for d in dtypes):
        p.error(f"--dtypes must be fp32 and/or fp64, got {args.dtypes!r}")
    try:
        hidden = [int(h) for h in args.hidden.split(",")]
    except ValueError:
        p.error(f"--hidden must be comma-separated integers, got {args.hidden!r}")
    if any(h < 1 for h in hidden):
        p.error(f"--hidden values must be >= 1, got {args.hidden!r}")
    if os.environ.get("TRITON_INTERPRET") == "1":
        p.error("unset TRITON_INTERPRET: the interpreter compiles nothing")
    print(table(report(dtypes, hidden)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
