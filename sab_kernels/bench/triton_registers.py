"""Registers, spills and shared memory of the fused SAB-LSTM Triton kernels on sm_90, compiled ahead of time
with no GPU (by Triton's own ptxas, read back with its cuobjdump), at the tile sizes `sab_lstm_triton.blocks`
picks for a GPU:

    python -m sab_kernels.bench.triton_registers [--dtypes fp32,fp64] [--hidden 64,128,256]

D = H, k_top = 5. Prints a markdown table. With --op instead: this Triton release's entry of the sparse-attention
op's stage-1 register table (`triton_backend.STAGE1_REGISTERS`, which sizes the GPU plan's chunks). Needs a Triton with the ahead-of-time API (3.7 to 3.9 here) and
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


def op_stage1_usage(dtype: str, block_d: int, k_pad: int, sort_merge: bool = True) -> Dict[str, int]:
    """Registers and spills of the op's stage-1 kernel (`_fwd_chunk_kernel`, chunked: FUSED=False) on sm_90 at
    the GPU plan's tile for this BLOCK_D (D = BLOCK_D, k_top = K_PAD - 1, the forward's 4 warps)."""
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from ..kernels import triton_backend
    from ..kernels.triton_kernels import _fwd_chunk_kernel

    fp64 = dtype == "fp64"
    block_t = triton_backend.forward_plan(1, 1 << 20, block_d, k_pad - 1, False, block_t=None, chunk=1 << 20)[0]
    sig = dict(q_ptr="*" + dtype, k_ptr="*" + dtype, w_ptr="*" + dtype, len_ptr="*i64", v_ptr="*" + dtype,
               cand_key_ptr="*i64" if fp64 else "*i32", cand_idx_ptr="*i32", summary_ptr="*" + dtype,
               weights_ptr="*" + dtype, indices_ptr="*i64", threshold_ptr="*i64",
               T="i32", K_OUT="i32", CHUNK="i32", NUM_CHUNKS="i32")
    consts = dict(D=block_d, H=64, ACC=tl.float64 if fp64 else tl.float32, FP64=fp64, K_TOP=k_pad - 1, K_PAD=k_pad,
                  BLOCK_T=block_t, BLOCK_D=block_d, BLOCK_H=64, FUSED=False, SORT_MERGE=sort_merge and not fp64,
                  EPS=1e-7)
    sig.update({name: "constexpr" for name in consts})
    sig = {name: sig[name] for name in _fwd_chunk_kernel.arg_names}
    attrs = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(sig) if sig[name].startswith("*")}
    kernel = triton.compile(ASTSource(fn=_fwd_chunk_kernel, signature=sig, constexprs=consts, attrs=attrs),
                            target=GPUTarget("cuda", 90, 32), options=dict(triton_backend.LAUNCH_OPTIONS, num_warps=4))
    return dict(block_t=block_t, **_resource_usage(kernel.asm["cubin"]))


def op_stage1_table(dtypes: Sequence[str] = ("bf16", "fp32", "fp64"), block_ds: Sequence[int] = (16, 32, 64, 128),
                    k_pads: Sequence[int] = (2, 4, 8, 16, 32, 64, 128, 256)) -> str:
    """This Triton release's entry of `triton_backend.STAGE1_REGISTERS` as Python source, with any spills seen."""
    import triton

    minor = ".".join(triton.__version__.split(".")[:2])
    lines = [f"# Triton {triton.__version__}, sm_90: python -m sab_kernels.bench.triton_registers --op",
             f'"{minor}": {{  # (dtype, BLOCK_D): registers at K_PAD = ' + ", ".join(map(str, k_pads))]
    for dtype in dtypes:
        for block_d in block_ds:
            usage = [op_stage1_usage(dtype, block_d, k_pad) for k_pad in k_pads]
            spills = [f"K_PAD {k}: stack {u['stack_bytes']} B, local {u['local_bytes']} B" for k, u in zip(k_pads, usage)
                      if u["local_bytes"] or u["stack_bytes"]]
            lines.append(f'        ("{dtype}", {block_d}): ({", ".join(str(u["registers"]) for u in usage)}),'
                         + (f"  # spills {', '.join(spills)}" if spills else ""))
    lines.append("},")
    return "\n".join(lines)


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
    p.add_argument("--op", action="store_true", help="instead: the sparse-attention op's stage-1 register table "
                   "(triton_backend.STAGE1_REGISTERS)")
    args = p.parse_args(argv)
    if args.op:
        if os.environ.get("TRITON_INTERPRET") == "1":
            p.error("unset TRITON_INTERPRET: the interpreter compiles nothing")
        print(op_stage1_table())
        return 0
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
