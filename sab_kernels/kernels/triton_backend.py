"""Triton backend: host functions that pick block sizes and launch the kernels of triton_kernels.py.

Runs on CUDA tensors, or on CPU tensors under TRITON_INTERPRET=1 (CI), with the contract of
`sab_kernels.kernels` (forward / backward). Block sizes differ by mode: on GPU small register tiles and
the slots of a row split into chunks over many programs; in the interpreter (one program after another,
numpy underneath) large tiles and one chunk, which is far faster there.
"""

from __future__ import annotations

import contextlib
import functools

import torch
import triton
import triton.language as tl

from . import triton_interpreter_enabled
from ..reference import EPS
from .triton_kernels import _bwd_kernel, _fwd_chunk_kernel, _fwd_merge_kernel

_MAX_CANDIDATES = 4096  # C_PAD * K_PAD of the merge stage
# k_top + 1 rounded up past this (dense attention: SABLSTM(k_top=None) passes k_top = T) goes to the reference
# backend's PyTorch ops on the same device (a sort and a dense softmax): the kernels hold the top-(k+1) set in
# registers, and at K_PAD = 2048 the backward took 98 s to compile and spilled 5.5 KB per thread (sm_90 review).
MAX_K_PAD = 256
# Compile options passed on every launch, not left to the release's default (Triton 3.10 changes
# enable_fp_fusion's): fused multiply-adds, as Triton 3.7 to 3.9 compile by default.
LAUNCH_OPTIONS = dict(enable_fp_fusion=True)
# GPU tuning knobs (set from reasoning and sm_90 register counts, not yet measured on a GPU):
_MIN_TILES_TO_SPLIT = 16  # rows shorter than this many tiles run as one fused launch
_FORWARD_WARPS = 4  # both forward kernels; STAGE1_REGISTERS was compiled with it
_MIN_CHUNK_TILES = 4  # chunked rows: at least this many tiles (and 4 * (k_top + 1) slots) per chunk
_GPU_TILE_ELEMENTS = 4096  # BLOCK_T * BLOCK_D of a key tile (two in flight: 64 registers/thread in float32)


# Registers per thread of the chunked stage-1 kernel (_fwd_chunk_kernel, FUSED=False, SORT_MERGE for float32) at
# the GPU plan's tile, compiled for sm_90 with no GPU, per Triton minor release: they differ by release (float32,
# BLOCK_D 128, K_PAD 16: 158 with 3.7, 128 with 3.9). Nothing spills to local memory; 3.9 keeps 8 B of stack
# at float32, BLOCK_D 128, K_PAD 256. A release's rows come from
#   python -m sab_kernels.bench.triton_registers --op
# (tests/test_triton.py checks entries against the running release's compiler). fp16 loads like bf16;
# BLOCK_D < 16 reads the BLOCK_D = 16 row (narrower tiles hold fewer keys).
STAGE1_REGISTERS = {
    "3.7": {  # (dtype, BLOCK_D): registers at K_PAD = 2, 4, ..., 256
        ("bf16", 16): (80, 95, 96, 96, 117, 119, 96, 116),
        ("bf16", 32): (128, 127, 122, 128, 157, 128, 126, 128),
        ("bf16", 64): (128, 128, 128, 159, 157, 153, 128, 123),
        ("bf16", 128): (115, 128, 128, 128, 128, 126, 128, 128),
        ("fp32", 16): (80, 92, 92, 123, 128, 126, 96, 117),
        ("fp32", 32): (122, 124, 158, 168, 157, 167, 158, 128),
        ("fp32", 64): (124, 168, 168, 165, 161, 164, 149, 154),
        ("fp32", 128): (162, 168, 160, 158, 152, 147, 150, 156),
        ("fp64", 16): (127, 127, 127, 127, 127, 120, 122, 124),
        ("fp64", 32): (234, 234, 234, 234, 234, 214, 212, 218),
        ("fp64", 64): (234, 234, 234, 234, 234, 216, 218, 220),
        ("fp64", 128): (226, 226, 226, 226, 228, 222, 228, 230),
    },
    "3.8": {  # (dtype, BLOCK_D): registers at K_PAD = 2, 4, ..., 256
        ("bf16", 16): (78, 91, 91, 95, 113, 115, 96, 118),
        ("bf16", 32): (116, 120, 121, 124, 126, 122, 126, 141),
        ("bf16", 64): (114, 118, 126, 123, 122, 124, 127, 145),
        ("bf16", 128): (116, 120, 116, 116, 117, 124, 128, 128),
        ("fp32", 16): (80, 92, 96, 96, 96, 94, 96, 120),
        ("fp32", 32): (128, 128, 128, 127, 126, 151, 128, 164),
        ("fp32", 64): (128, 126, 128, 126, 128, 128, 158, 166),
        ("fp32", 128): (122, 128, 126, 128, 128, 154, 159, 162),
        ("fp64", 16): (127, 127, 127, 127, 127, 127, 124, 127),
        ("fp64", 32): (228, 228, 228, 228, 230, 230, 217, 230),
        ("fp64", 64): (230, 230, 230, 230, 228, 232, 226, 234),
        ("fp64", 128): (209, 214, 210, 210, 210, 209, 214, 220),
    },
    "3.9": {  # (dtype, BLOCK_D): registers at K_PAD = 2, 4, ..., 256; (fp32, 128) at 256 keeps 8 B of stack
        ("bf16", 16): (72, 72, 80, 80, 92, 93, 94, 113),
        ("bf16", 32): (96, 96, 96, 108, 110, 108, 128, 127),
        ("bf16", 64): (95, 96, 109, 96, 109, 126, 126, 127),
        ("bf16", 128): (96, 104, 105, 105, 107, 96, 104, 128),
        ("fp32", 16): (80, 88, 92, 95, 96, 92, 96, 115),
        ("fp32", 32): (128, 128, 135, 128, 147, 141, 150, 128),
        ("fp32", 64): (128, 128, 125, 122, 122, 128, 128, 128),
        ("fp32", 128): (128, 128, 122, 128, 128, 108, 128, 128),
        ("fp64", 16): (127, 127, 127, 127, 127, 127, 124, 127),
        ("fp64", 32): (226, 226, 226, 226, 230, 234, 217, 232),
        ("fp64", 64): (230, 230, 230, 230, 228, 232, 226, 234),
        ("fp64", 128): (211, 210, 210, 210, 214, 209, 214, 220),
    },
}


def stage1_registers(version: str = triton.__version__) -> dict:
    """STAGE1_REGISTERS of this Triton release: its minor's, else the newest older one's, else the oldest."""
    def key(v):
        return tuple(int(x) for x in v.split(".")[:2])

    known = sorted(STAGE1_REGISTERS, key=key)
    older = [v for v in known if key(v) <= key(version)]
    return STAGE1_REGISTERS[older[-1] if older else known[0]]


def programs_for_registers(registers: int) -> int:
    """Stage-1 programs (of _FORWARD_WARPS warps) that fit one SM by registers: sm_90 has 64K 32-bit registers,
    allocated per warp in units of 256 (per thread in multiples of 8), and runs at most 64 warps."""
    return max(1, min(64 // _FORWARD_WARPS, 65536 // (-(-registers // 8) * 8 * 32 * _FORWARD_WARPS)))


def programs_per_sm(dtype: torch.dtype, block_d: int, k_pad: int) -> int:
    """Stage-1 programs per SM for the chunked plan, from this Triton release's STAGE1_REGISTERS."""
    name = {torch.float64: "fp64", torch.float32: "fp32"}.get(dtype, "bf16")
    return programs_for_registers(stage1_registers()[(name, max(16, min(block_d, 128)))][k_pad.bit_length() - 2])


def _acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _interpreted(t: torch.Tensor) -> bool:
    return t.device.type != "cuda" and triton_interpreter_enabled()


@functools.lru_cache(maxsize=None)
def _num_sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _pow2(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))


def score_block_d(D: int, interpreted: bool) -> int:
    """D block of the score sums, in the forward and in the backward's recomputation alike: a float sum's bits
    depend on how it is split, and the backward must see the forward's scores (tau, relu's mask)."""
    return min(_pow2(D), 256 if interpreted else 128)


def forward_plan(B: int, T: int, D: int, k_top: int, interpreted: bool, device=None, block_t=None, chunk=None,
                 dtype: torch.dtype = torch.float32):
    """(BLOCK_T, BLOCK_D, CHUNK, NUM_CHUNKS) for the forward. CHUNK is a multiple of BLOCK_T.

    GPU: tiles of about 4K elements (two in flight per program). Rows of 16 tiles or more are split into
    chunks so that one wave of stage-1 programs fills the GPU (`programs_per_sm`, from the compiled register
    count: 2 to 4 per SM; B rows alone cannot fill the GPU at large T), each chunk at least 4 tiles and
    4 (k_top + 1) slots to amortise filling its top-k set.
    Interpreter: tiles up to 64K elements and one chunk, unless `block_t` / `chunk` say otherwise (tests).
    """
    k1 = k_top + 1
    k_pad = _pow2(k1)
    block_d = score_block_d(D, interpreted)
    if interpreted:
        default_t = max(16, min(4096, 65536 // block_d))
    else:
        default_t = max(16, min(128, _GPU_TILE_ELEMENTS // block_d))
    if block_t is None:
        block_t = min(default_t, max(16, _pow2(T)))
    tiles = triton.cdiv(T, block_t)
    if chunk is None:
        if interpreted or tiles < _MIN_TILES_TO_SPLIT:
            chunks = 1  # small rows: one fused launch, latency matters more than parallelism
        else:
            index = device.index if device is not None and device.index is not None else torch.cuda.current_device()
            target = programs_per_sm(dtype, block_d, k_pad) * _num_sms(index)
            min_tiles = max(_MIN_CHUNK_TILES, triton.cdiv(4 * k1, block_t))
            chunks = max(1, min(triton.cdiv(target, B), triton.cdiv(tiles, min_tiles)))
        chunk_tiles = triton.cdiv(tiles, chunks)
    else:
        chunk_tiles = max(1, triton.cdiv(chunk, block_t))
    # The merge stage holds every candidate of a row in one block: bound the number of chunks.
    max_chunks = max(1, _MAX_CANDIDATES // k_pad)
    chunk_tiles = max(chunk_tiles, triton.cdiv(tiles, max_chunks))
    chunk = chunk_tiles * block_t
    return block_t, block_d, chunk, triton.cdiv(T, chunk)


def forward(query, keys, values, score_weight, k_top: int, lengths, eps: float = EPS, *, block_t=None, chunk=None,
            sort_merge=None):
    """Contract of `sab_kernels.kernels`: (summary (B, H), weights (B, k), indices (B, k), threshold (B,)).

    `block_t` / `chunk` (slots per tile / per program) override the plan; for tests of the chunked path.
    `sort_merge` merges a tile's candidates into float32's running top-(k+1) at a fixed cost (`_scan_chunk`).
    Default: on a GPU, in chunked rows (long: the data-dependent loop's worst case grows with the chunk). Rows
    of under 16 tiles (one fused launch) keep the loop: there ptxas 12.9 (Triton 3.8) caps the fused kernel at
    128 registers and spills 8 B at K_PAD >= 64. The interpreter runs it only when asked (tests): slow sorts.
    """
    B, T, D = keys.shape
    H = values.shape[2]
    k = min(k_top, T)
    if _pow2(k + 1) > MAX_K_PAD:
        return _large_k().forward(query, keys, values, score_weight, k, lengths, eps)
    dtype, dev = values.dtype, values.device
    query, keys, values, score_weight = (t.contiguous() for t in (query, keys, values, score_weight))
    lengths = lengths.to(device=dev, dtype=torch.int64).contiguous()
    interpreted = _interpreted(keys)
    fp64 = dtype == torch.float64
    k_pad = _pow2(k_top + 1)
    block_t, block_d, chunk, num_chunks = forward_plan(B, T, D, k_top, interpreted, dev, block_t, chunk, dtype)
    block_h = min(_pow2(H), 256 if interpreted else 128)
    # Keep the (K_PAD, BLOCK_H) gather tile bounded for large k_top.
    block_h = max(1, min(block_h, _pow2(16384 // k_pad) if interpreted else _pow2(8192 // k_pad)))

    summary = torch.empty((B, H), dtype=dtype, device=dev)
    weights = torch.empty((B, k), dtype=dtype, device=dev)
    indices = torch.empty((B, k), dtype=torch.int64, device=dev)
    threshold = torch.empty((B,), dtype=torch.int64, device=dev)
    key_dtype = torch.int64 if fp64 else torch.int32
    fused = num_chunks == 1
    if fused:
        cand_key = torch.empty((1,), dtype=key_dtype, device=dev)
        cand_idx = torch.empty((1,), dtype=torch.int32, device=dev)
    else:
        cand_key = torch.empty((B * num_chunks * k_pad,), dtype=key_dtype, device=dev)
        cand_idx = torch.empty((B * num_chunks * k_pad,), dtype=torch.int32, device=dev)
    acc = _acc(dtype)
    warps = dict(LAUNCH_OPTIONS, **({} if interpreted else {"num_warps": _FORWARD_WARPS}))
    with _device_guard(dev):
        _fwd_chunk_kernel[(B * num_chunks,)](
            query, keys, score_weight, lengths, values, cand_key, cand_idx,
            summary, weights, indices, threshold,
            T, k, chunk, num_chunks,
            D=D, H=H, ACC=acc, FP64=fp64, K_TOP=k_top, K_PAD=k_pad, BLOCK_T=block_t, BLOCK_D=block_d,
            BLOCK_H=block_h, FUSED=fused, SORT_MERGE=(not (interpreted or fused) if sort_merge is None else sort_merge) and not fp64,
            EPS=eps, **warps,
        )
        if not fused:
            _fwd_merge_kernel[(B,)](
                lengths, values, cand_key, cand_idx, summary, weights, indices, threshold,
                T, k, num_chunks,
                H=H, ACC=acc, FP64=fp64, K_TOP=k_top, K_PAD=k_pad, C_PAD=_pow2(num_chunks), BLOCK_H=block_h,
                EPS=eps, **warps,
            )
    return summary, weights, indices, threshold


def backward(grad_summary, grad_weights, query, keys, values, score_weight, k_top: int, lengths, weights, indices, threshold,
             eps: float = EPS):
    """Contract of `sab_kernels.kernels`: (grad_query, grad_keys, grad_values, grad_score_weight).

    One program per row; grad_keys / grad_values are zeros except the rows the kernel writes; the
    score_weight gradient is reduced from per-row partials here, in a fixed order.
    """
    B, T, D = keys.shape
    if _pow2(min(k_top, T) + 1) > MAX_K_PAD:
        return _large_k().backward(grad_summary, grad_weights, query, keys, values, score_weight, min(k_top, T), lengths,
                                   weights, indices, threshold, eps)
    H = values.shape[2]
    k = min(k_top, T)
    dtype, dev = values.dtype, values.device
    tensors = (grad_summary, grad_weights, query, keys, values, score_weight, indices, threshold)
    grad_summary, grad_weights, query, keys, values, score_weight, indices, threshold = (t.contiguous() for t in tensors)
    interpreted = _interpreted(keys)
    k_pad = _pow2(k_top + 1)
    block_d, block_h = backward_blocks(D, H, k_pad, interpreted)
    acc_dtype = torch.float64 if dtype == torch.float64 else torch.float32

    grad_query = torch.empty((B, D), dtype=dtype, device=dev)
    grad_keys = torch.zeros((B, T, D), dtype=dtype, device=dev)
    grad_values = torch.zeros((B, T, H), dtype=dtype, device=dev)
    grad_w_rows = torch.empty((B, D), dtype=acc_dtype, device=dev)
    warps = dict(LAUNCH_OPTIONS, **({} if interpreted else {"num_warps": backward_warps(k_pad, block_d, block_h)}))
    with _device_guard(dev):
        _bwd_kernel[(B,)](
            grad_summary, grad_weights, query, keys, values, score_weight, indices, threshold,
            grad_query, grad_keys, grad_values, grad_w_rows,
            T, k,
            D=D, H=H, ACC=_acc(dtype), K_PAD=k_pad, BLOCK_D=block_d, BLOCK_H=block_h,
            SCORE_BLOCK_D=score_block_d(D, interpreted), EPS=eps, **warps,
        )
    return grad_query, grad_keys, grad_values, grad_w_rows.sum(0).to(dtype)


def backward_blocks(D: int, H: int, k_pad: int, interpreted: bool):
    """(BLOCK_D, BLOCK_H) of the backward's gradient passes: (K_PAD, block) tiles of at most 8K elements on a GPU.
    Its score pass uses `score_block_d` instead (the forward's sums)."""
    cap = 65536 if interpreted else 8192
    block_d = max(1, min(_pow2(D), 256 if interpreted else 128, _pow2(cap // k_pad)))
    block_h = max(1, min(_pow2(H), 256 if interpreted else 128, _pow2(cap // k_pad)))
    return block_d, block_h


def backward_warps(k_pad: int, block_d: int, block_h: int) -> int:
    """Warps of the backward on a GPU: 8 for wide tiles and for K_PAD >= 64, where 4 warps spill (sm_90, float32:
    8 bytes of stack at K_PAD = 64, measured with bench/triton_registers' cuobjdump reading), 4 otherwise."""
    return 8 if k_pad >= 64 or k_pad * max(block_d, block_h) >= 8192 else 4


def _large_k():
    from . import reference_backend

    return reference_backend


def _device_guard(dev: torch.device):
    return torch.cuda.device(dev) if dev.type == "cuda" else contextlib.nullcontext()
