"""Triton kernels of the SAB sparse-attention op (SPEC section 1); host launchers are in triton_backend.py.

Forward, in one or two launches:
  stage 1 (`_fwd_chunk_kernel`, grid B * C): each program streams one chunk of a row's slots in tiles of
      BLOCK_T, computes s_i = sum_d w_d tanh(q_d + k_{i,d}) in registers (never a (B, T, D) tensor) and
      keeps the chunk's best K1 = k_top + 1 slots. C = 1 (small T) fuses stage 2 into the same program.
  stage 2 (`_fwd_merge_kernel`, grid B): merges the C * K_PAD candidates of a row, orders the best K1,
      forms the weights (sparse or softmax), gathers only the selected value rows and writes the outputs.

Ranking. A score becomes a sortable integer key of its own width (int32 for float32 compute, int64 for
float64): the float bits with the magnitude bits flipped when negative, so integer order is float order;
every NaN maps to one key above +inf (torch.sort puts NaN first) and -0.0 to the key of +0.0. Invalid slots
(i >= lengths[b], tile padding) get a sentinel below every key and are never kept. 32-bit keys are packed
with the slot into one int64 (key high, 2^31-1-slot low), so one max-reduction finds the best score and,
among ties, the lower slot; 64-bit keys carry the slot beside them (max key, then min slot: two reductions).
The running top-K1 of a chunk is a register set whose K1-th best entry is the threshold: a tile costs one
max-reduction unless its best beats the threshold. Then, compiled, float32 and chunked, the tile is merged in
at a fixed cost (tl.topk and a bitonic merge, the set kept sorted: SORT_MERGE); in the interpreter (slow sorts,
TOOLCHAIN.md), for float64 and in fused rows, the best replaces the weakest entry, repeatedly (about K1 * ln(chunk / K1)
replacements per chunk on typical data, at most K1 per tile). The final order comes from K1 rounds of
extraction. No atomics.

Streaming. The next tile's keys are loaded before the current tile is scored (two tiles in flight per
program; Triton does not software-pipeline this loop). D wider than BLOCK_D loops over D blocks.

Backward (`_bwd_kernel`, grid B): recomputes the k selected + threshold rows' scores only, summed in the
forward's D blocks and order (`_row_scores`, SCORE_BLOCK_D = the forward's BLOCK_D: the same bits, so the same
tau and weights; its gradient passes use their own, smaller BLOCK_D), the weights and the Jacobian exactly as
`reference_backward`, writes grad rows of keys/values at those slots, grad_query,
and per-row partials of grad_score_weight (summed on the host: deterministic, no atomics).

Accumulation in float32 (float16/bfloat16/float32 inputs) or float64 (float64 inputs). tanh is libdevice's when
compiled, 2 * sigmoid(2x) - 1 in the interpreter (which has no libdevice; TRITON_INTERPRET is read once, when this
module is imported). Row offsets are int64.
"""

from __future__ import annotations

import triton
import triton.language as tl

from . import triton_interpreter_enabled



if triton_interpreter_enabled():  # the interpreter has no libdevice

    @triton.jit
    def _tanh(x):
        return 2.0 * tl.sigmoid(2.0 * x) - 1.0

else:  # one special-function op per element, where the sigmoid form costs two (sm_90 review)
    from triton.language.extra import libdevice

    @triton.jit
    def _tanh(x):
        return libdevice.tanh(x)


@triton.jit
def _key_bounds(FP64: tl.constexpr):
    """(KEY_MIN, KEY_MAX) sentinels: below every score's key / above every score's key (NaN included)."""
    if FP64:
        return -9223372036854775807 - 1, 9223372036854775807
    else:
        return -2147483648, 2147483647


@triton.jit
def _score_key(s, FP64: tl.constexpr):
    """Sortable integer key of a float score: integer order = float order, NaN above +inf, -0.0 == +0.0."""
    if FP64:
        bits = s.to(tl.int64, bitcast=True)
        key = tl.where(bits < 0, bits ^ 0x7FFFFFFFFFFFFFFF, bits)
        key = tl.where(s != s, 0x7FF8000000000000, key)
    else:
        bits = s.to(tl.int32, bitcast=True)
        key = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
        key = tl.where(s != s, 0x7FC00000, key)
    return tl.where(s == 0, 0, key)


@triton.jit
def _key_score(key, FP64: tl.constexpr):
    """Inverse of `_score_key` (exact, up to the sign of zero and the NaN payload)."""
    if FP64:
        bits = tl.where(key < 0, key ^ 0x7FFFFFFFFFFFFFFF, key)
        return bits.to(tl.float64, bitcast=True)
    else:
        bits = tl.where(key < 0, key ^ 0x7FFFFFFF, key)
        return bits.to(tl.float32, bitcast=True)


@triton.jit
def _pack(key, idx):
    """One int64 per (int32 key, int32 index): key order, then the lower index first. Sentinels pack below."""
    return (key.to(tl.int64) << 32) | (2147483647 - idx.to(tl.int64))


@triton.jit
def _unpack(p):
    return (p >> 32).to(tl.int32), (2147483647 - (p & 0xFFFFFFFF)).to(tl.int32)


@triton.jit
def _sorted_top(key, idx, K1: tl.constexpr, K_PAD: tl.constexpr, FP64: tl.constexpr):
    """The best K1 (key, idx) of a candidate vector, ordered (key descending, idx ascending), in a K_PAD
    vector; positions >= K1, and positions left when fewer candidates exist, hold KEY_MIN."""
    KEY_MIN, KEY_MAX = _key_bounds(FP64)
    pos = tl.arange(0, K_PAD)
    if FP64:  # 64-bit keys: (max key, then min index among equal keys) per round
        out_key = tl.zeros([K_PAD], key.dtype) + KEY_MIN
        out_idx = tl.full([K_PAD], -1, tl.int32)
        for r in range(K1):
            m = tl.max(key, 0)
            i = tl.min(tl.where(key == m, idx, 2147483647), 0)
            out_key = tl.where(pos == r, m, out_key)
            out_idx = tl.where(pos == r, i, out_idx)
            key = tl.where((key == m) & (idx == i), KEY_MIN, key)
    else:  # 32-bit keys packed with the index: one reduction per round
        p = _pack(key, idx)
        out = tl.full([K_PAD], -9223372036854775807 - 1, tl.int64)
        for r in range(K1):
            m = tl.max(p, 0)
            out = tl.where(pos == r, m, out)
            p = tl.where(p == m, -9223372036854775807 - 1, p)
        out_key, out_idx = _unpack(out)
        out_key = tl.where(pos < K1, out_key, KEY_MIN)
    return out_key, out_idx


@triton.jit
def _tile_scores(k_tile, q, w, ACC: tl.constexpr):
    """(BLOCK_T,) partial scores sum_d w_d tanh(q_d + k_td) of one (BLOCK_T, BLOCK_D) key tile."""
    return tl.sum(_tanh(q[None, :] + k_tile.to(ACC)) * w[None, :], 1)


@triton.jit
def _row_scores(k_rows, live, q_row, w_ptr, D: tl.constexpr, ACC: tl.constexpr, BLOCK_D: tl.constexpr):
    """Scores of the key rows at `k_rows` (one pointer per row; rows not `live` read as zeros), summed over D
    exactly as `_scan_chunk` sums a tile's: `_tile_scores` of the first BLOCK_D block, then += the others."""
    offs_d = tl.arange(0, BLOCK_D)
    dmask = offs_d < D
    q = tl.load(q_row + offs_d, mask=dmask, other=0.0).to(ACC)
    w = tl.load(w_ptr + offs_d, mask=dmask, other=0.0).to(ACC)
    s = _tile_scores(tl.load(k_rows[:, None] + offs_d[None, :], mask=live[:, None] & dmask[None, :], other=0.0), q, w, ACC)
    for d0 in tl.static_range(BLOCK_D, D, BLOCK_D):  # only when D > BLOCK_D
        dmask = (d0 + offs_d) < D
        q = tl.load(q_row + d0 + offs_d, mask=dmask, other=0.0).to(ACC)
        w = tl.load(w_ptr + d0 + offs_d, mask=dmask, other=0.0).to(ACC)
        kr = tl.load(k_rows[:, None] + (d0 + offs_d)[None, :], mask=live[:, None] & dmask[None, :], other=0.0)
        s += _tile_scores(kr, q, w, ACC)
    return s


@triton.jit
def _load_tile(k_row, t0, end, d0, D: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    """Keys of slots [t0, t0 + BLOCK_T) and dims [d0, d0 + BLOCK_D) of a row, zero outside [.., end) x D."""
    offs_t = tl.arange(0, BLOCK_T)
    offs_d = d0 + tl.arange(0, BLOCK_D)
    mask = ((t0 + offs_t) < end)[:, None] & (offs_d < D)[None, :]
    return tl.load(k_row + tl.cast(t0, tl.int64) * D + offs_t[:, None] * D + offs_d[None, :], mask=mask, other=0.0)


@triton.jit
def _merge_tile(run, p, K_PAD: tl.constexpr, BLOCK_T: tl.constexpr):
    """The best K_PAD of a sorted (descending) running set `run` (K_PAD,) and a tile's packed keys `p`
    (BLOCK_T,), sorted descending: a fixed number of compare-exchange stages, whatever the data.

    The tile's best K_PAD (tl.topk; a tile shorter than K_PAD is first padded with P_MIN) flipped to ascending
    order, against `run` descending: the elementwise max holds the K_PAD best of both (the first half-cleaner
    of a bitonic merge) as a bitonic sequence, which one bitonic merge (log2 K_PAD stages) sorts.
    """
    P_MIN: tl.constexpr = -9223372036854775807 - 1
    if BLOCK_T < K_PAD:
        R: tl.constexpr = K_PAD // BLOCK_T
        p = tl.reshape(tl.where(tl.arange(0, R)[:, None] == 0, p[None, :], P_MIN), [K_PAD])
    top = tl.flip(tl.topk(p, K_PAD), 0)
    return tl.bitonic_merge(tl.maximum(run, top), descending=True)


@triton.jit
def _scan_chunk(q_row, k_row, w_ptr, start, end, D: tl.constexpr, ACC: tl.constexpr, FP64: tl.constexpr,
                K1: tl.constexpr, K_PAD: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
                SORT_MERGE: tl.constexpr = False):
    """Scores of slots [start, end) of one row, tile by tile; returns the best K1 in (run_key, run_idx) of
    K_PAD entries, KEY_MIN at positions >= K1 and where empty (unordered, or ordered with SORT_MERGE).
    k_row points at slot 0 of the row.

    The K1-th best key is the threshold `thr`: a tile whose best does not beat it costs one max-reduction.
    Otherwise, by default, the tile's best replaces the set's weakest entry, repeatedly: 2-3 block reductions
    per entering slot, which is data dependent (about K1 per tile when scores rise with the slot, ~32x the
    typical cost). SORT_MERGE (float32 keys only; the GPU default for chunked rows, see triton_backend.forward):
    one fixed-cost `_merge_tile` per such tile (tl.topk of the tile, a bitonic merge with the set kept sorted).
    On typical data few tiles merge and both cost about the same; on rising scores the merge bounds the cost
    per tile (expected several times faster there; unmeasured, no GPU so far). It costs registers: float32,
    BLOCK_D 128, K_PAD 16 takes 158 with Triton 3.7 (123 with the loop: 3 stage-1 programs per SM instead of
    4) and 128 with 3.9 (STAGE1_REGISTERS; no spill but 8 B of stack with 3.9 at BLOCK_D 128, K_PAD 256).
    The interpreter keeps the loop: tl.topk / tl.sort run slowly on numpy (TOOLCHAIN.md). 64-bit keys always
    take the loop: a 64-bit key and its slot do not fit one sortable integer, and tl.sort carries no payload.
    32-bit keys are packed with their slot (one reduction per step); 64-bit keys carry the slot apart.
    The next tile's first D block is loaded before the current tile is scored (two tiles in flight).
    """
    KEY_MIN, KEY_MAX = _key_bounds(FP64)
    P_MIN: tl.constexpr = -9223372036854775807 - 1
    pos = tl.arange(0, K_PAD)
    offs_t = tl.arange(0, BLOCK_T)
    offs_d = tl.arange(0, BLOCK_D)
    # Empty entries rank below every slot, entries >= K1 above every slot (never the weakest); all distinct.
    if FP64:
        run_key = tl.where(pos < K1, KEY_MIN, KEY_MAX)
        run_idx = -1 - pos
    elif SORT_MERGE:  # sorted descending; the K1-th entry is thr
        run_key = tl.full([K_PAD], P_MIN, tl.int64)
        run_idx = pos  # unused
    else:
        pos64 = pos.to(tl.int64)
        run_key = tl.where(pos < K1, P_MIN + pos64, 9223372036854775807 - pos64)
        run_idx = pos  # unused
    thr = tl.min(run_key, 0)  # P_MIN + 0 / KEY_MIN / P_MIN: below every valid slot
    q0 = tl.load(q_row + offs_d, mask=offs_d < D, other=0.0).to(ACC)
    w0 = tl.load(w_ptr + offs_d, mask=offs_d < D, other=0.0).to(ACC)
    nxt = _load_tile(k_row, start, end, 0, D, BLOCK_T, BLOCK_D)
    for it in range(0, tl.cdiv(end - start, BLOCK_T)):
        t0 = start + it * BLOCK_T
        cur = nxt
        nxt = _load_tile(k_row, t0 + BLOCK_T, end, 0, D, BLOCK_T, BLOCK_D)
        s = _tile_scores(cur, q0, w0, ACC)
        for d0 in tl.static_range(BLOCK_D, D, BLOCK_D):  # only when D > BLOCK_D
            dmask = (d0 + offs_d) < D
            q = tl.load(q_row + d0 + offs_d, mask=dmask, other=0.0).to(ACC)
            w = tl.load(w_ptr + d0 + offs_d, mask=dmask, other=0.0).to(ACC)
            s += _tile_scores(_load_tile(k_row, t0, end, d0, D, BLOCK_T, BLOCK_D), q, w, ACC)
        slot = t0 + offs_t
        tmask = slot < end
        if FP64:
            key = tl.where(tmask, _score_key(s, FP64), KEY_MIN)
            mk = tl.max(key, 0)
            while mk > thr:  # tiles come in slot order: a key equal to thr ranks below it
                i = tl.min(tl.where(key == mk, slot, 2147483647), 0)
                # Replace the weakest entry: lowest key, and among equal keys the highest index.
                wi = tl.max(tl.where(run_key == thr, run_idx, -2147483648), 0)
                weakest = (run_key == thr) & (run_idx == wi)
                run_key = tl.where(weakest, mk, run_key)
                run_idx = tl.where(weakest, i, run_idx)
                key = tl.where(slot == i, KEY_MIN, key)
                thr = tl.min(run_key, 0)
                mk = tl.max(key, 0)
        elif SORT_MERGE:
            p = tl.where(tmask, _pack(_score_key(s, FP64), slot), P_MIN)
            if tl.max(p, 0) > thr:
                run_key = _merge_tile(run_key, p, K_PAD, BLOCK_T)
                thr = tl.min(tl.where(pos < K1, run_key, 9223372036854775807), 0)
        else:
            p = tl.where(tmask, _pack(_score_key(s, FP64), slot), P_MIN)
            mp = tl.max(p, 0)
            while mp > thr:
                run_key = tl.where(run_key == thr, mp, run_key)
                p = tl.where(p == mp, P_MIN, p)
                thr = tl.min(run_key, 0)
                mp = tl.max(p, 0)
    if not FP64:
        run_key, run_idx = _unpack(run_key)
    run_key = tl.where(pos < K1, run_key, KEY_MIN)
    return run_key, run_idx


@triton.jit
def _finish_row(b, top_key, top_idx, n, T, k_out, v_ptr, summary_ptr, weights_ptr, indices_ptr, threshold_ptr,
                H: tl.constexpr, ACC: tl.constexpr, FP64: tl.constexpr, K_TOP: tl.constexpr,
                K_PAD: tl.constexpr, BLOCK_H: tl.constexpr, EPS: tl.constexpr):
    """Weights, indices, threshold and summary of row b from its ordered top-(k_top+1) candidates."""
    KEY_MIN, KEY_MAX = _key_bounds(FP64)
    pos = tl.arange(0, K_PAD)
    valid = top_key != KEY_MIN
    s = tl.where(valid, _key_score(top_key, FP64), 0.0)
    used = valid & (pos < K_TOP)
    sparse = n > K_TOP
    # Sparse rows: relu(s - tau) / (sum + eps); NaN propagates (where(r <= 0, 0, r), not where(r > 0, ...)).
    tau = tl.sum(tl.where(pos == K_TOP, s, 0.0), 0)
    r = s - tau
    relu = tl.where(used, tl.where(r <= 0, 0.0, r), 0.0)
    a_sparse = relu / (tl.sum(relu, 0) + EPS)
    # Few-slot rows: softmax over the valid slots; the first is the maximum (NaN ranks first).
    m = tl.sum(tl.where(pos == 0, s, 0.0), 0)
    e = tl.where(used, tl.exp(s - m), 0.0)
    e_sum = tl.sum(e, 0)
    a_dense = e / tl.where(e_sum > 0, e_sum, 1.0)  # no 0/0 in empty rows (masked below); NaN stays NaN
    a = tl.where(used, tl.where(sparse, a_sparse, a_dense), 0.0)

    b64 = b.to(tl.int64)
    out_mask = pos < k_out
    tl.store(weights_ptr + b64 * k_out + pos, a.to(weights_ptr.dtype.element_ty), mask=out_mask)
    tl.store(indices_ptr + b64 * k_out + pos, tl.where(used, top_idx, -1).to(tl.int64), mask=out_mask)
    thr_slot = tl.sum(tl.where(pos == K_TOP, top_idx, 0), 0)
    tl.store(threshold_ptr + b64, tl.where(sparse, thr_slot, -1).to(tl.int64))

    # Gather only the selected value rows.
    T64 = tl.cast(T, tl.int64)
    v_rows = v_ptr + (b64 * T64 + tl.where(used, top_idx, 0).to(tl.int64)) * H  # (K_PAD,) row pointers
    offs_h = tl.arange(0, BLOCK_H)
    for h0 in tl.static_range(0, H, BLOCK_H):
        hmask = (h0 + offs_h) < H
        v = tl.load(v_rows[:, None] + (h0 + offs_h)[None, :], mask=used[:, None] & hmask[None, :], other=0.0).to(ACC)
        contrib = tl.where(used[:, None], a[:, None] * v, 0.0)
        tl.store(summary_ptr + b64 * H + h0 + offs_h, tl.sum(contrib, 0).to(summary_ptr.dtype.element_ty), mask=hmask)


@triton.jit
def _fwd_chunk_kernel(q_ptr, k_ptr, w_ptr, len_ptr, v_ptr, cand_key_ptr, cand_idx_ptr,
                      summary_ptr, weights_ptr, indices_ptr, threshold_ptr,
                      T, K_OUT, CHUNK, NUM_CHUNKS,
                      D: tl.constexpr, H: tl.constexpr, ACC: tl.constexpr, FP64: tl.constexpr,
                      K_TOP: tl.constexpr, K_PAD: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
                      BLOCK_H: tl.constexpr, FUSED: tl.constexpr, SORT_MERGE: tl.constexpr, EPS: tl.constexpr):
    """Stage 1, one program per (row, chunk of CHUNK slots). FUSED (one chunk): also stage 2."""
    pid = tl.program_id(0)
    b = pid // NUM_CHUNKS
    c = pid % NUM_CHUNKS
    b64 = b.to(tl.int64)
    n = tl.load(len_ptr + b).to(tl.int32)
    start = c * CHUNK
    end = tl.minimum(start + CHUNK, n)
    run_key, run_idx = _scan_chunk(q_ptr + b64 * D, k_ptr + b64 * tl.cast(T, tl.int64) * D, w_ptr, start, end,
                                   D, ACC, FP64, K_TOP + 1, K_PAD, BLOCK_T, BLOCK_D, SORT_MERGE)
    if FUSED:
        if SORT_MERGE:  # already ordered
            top_key, top_idx = run_key, run_idx
        else:
            top_key, top_idx = _sorted_top(run_key, run_idx, K_TOP + 1, K_PAD, FP64)
        _finish_row(b, top_key, top_idx, n, T, K_OUT, v_ptr, summary_ptr, weights_ptr, indices_ptr, threshold_ptr,
                    H, ACC, FP64, K_TOP, K_PAD, BLOCK_H, EPS)
    else:
        pos = tl.arange(0, K_PAD)
        base = pid.to(tl.int64) * K_PAD
        tl.store(cand_key_ptr + base + pos, run_key)
        tl.store(cand_idx_ptr + base + pos, run_idx)


@triton.jit
def _fwd_merge_kernel(len_ptr, v_ptr, cand_key_ptr, cand_idx_ptr,
                      summary_ptr, weights_ptr, indices_ptr, threshold_ptr,
                      T, K_OUT, NUM_CHUNKS,
                      H: tl.constexpr, ACC: tl.constexpr, FP64: tl.constexpr, K_TOP: tl.constexpr,
                      K_PAD: tl.constexpr, C_PAD: tl.constexpr, BLOCK_H: tl.constexpr, EPS: tl.constexpr):
    """Stage 2, one program per row: merge the chunks' candidates, then weights and summary."""
    KEY_MIN, KEY_MAX = _key_bounds(FP64)
    b = tl.program_id(0)
    b64 = b.to(tl.int64)
    n = tl.load(len_ptr + b).to(tl.int32)
    offs = tl.arange(0, C_PAD * K_PAD)
    cmask = offs < NUM_CHUNKS * K_PAD
    base = b64 * NUM_CHUNKS * K_PAD
    key = tl.load(cand_key_ptr + base + offs, mask=cmask, other=KEY_MIN)
    idx = tl.load(cand_idx_ptr + base + offs, mask=cmask, other=-1)
    top_key, top_idx = _sorted_top(key, idx, K_TOP + 1, K_PAD, FP64)
    _finish_row(b, top_key, top_idx, n, T, K_OUT, v_ptr, summary_ptr, weights_ptr, indices_ptr, threshold_ptr,
                H, ACC, FP64, K_TOP, K_PAD, BLOCK_H, EPS)


@triton.jit
def _bwd_kernel(gs_ptr, gw_ptr, q_ptr, k_ptr, v_ptr, w_ptr, indices_ptr, threshold_ptr,
                gq_ptr, gk_ptr, gv_ptr, gwp_ptr,
                T, K_OUT,
                D: tl.constexpr, H: tl.constexpr, ACC: tl.constexpr, K_PAD: tl.constexpr,
                BLOCK_D: tl.constexpr, BLOCK_H: tl.constexpr, SCORE_BLOCK_D: tl.constexpr, EPS: tl.constexpr):
    """One program per row: `reference_backward` on the k = K_OUT selected rows and the threshold row.

    Entry j < K_OUT is selected slot j, entry K_OUT the threshold slot. Only live entries (a selected slot, or
    the threshold slot of a sparse row) read keys or values or add to any gradient: padding slots and the
    unused entries of short rows are never read, so NaN or inf stored there changes nothing.
    Every condition that reaches a mask is block-shaped: a block combined with a scalar condition gives int32
    masks in Triton 3.9's interpreter, which tl.load / tl.store reject.
    """
    b = tl.program_id(0)
    b64 = b.to(tl.int64)
    T64 = tl.cast(T, tl.int64)
    pos = tl.arange(0, K_PAD)
    is_sel = pos < K_OUT
    sel = tl.load(indices_ptr + b64 * K_OUT + pos, mask=is_sel, other=-1)
    thr = tl.load(threshold_ptr + b64)
    raw = tl.where(is_sel, sel, tl.where(pos == K_OUT, thr, -1))  # slot of each entry, -1 where none
    live = raw >= 0
    used = is_sel & live
    sparse_row = (tl.zeros([K_PAD], tl.int64) + thr) >= 0  # n > k_top, as a block
    rows = tl.maximum(raw, 0)  # pointer arithmetic only: dead entries are masked out of every load/store
    k_rows = k_ptr + (b64 * T64 + rows) * D  # (K_PAD,) row pointers
    v_rows = v_ptr + (b64 * T64 + rows) * H
    gv_rows = gv_ptr + (b64 * T64 + rows) * H
    offs_d = tl.arange(0, BLOCK_D)
    offs_h = tl.arange(0, BLOCK_H)

    # Scores of the k + 1 rows (dead entries see a zero key row: finite, and masked below), in the forward's D
    # blocks (SCORE_BLOCK_D) and order, so s, tau and the weights are the forward's bit for bit (a score near
    # tau moved by an ulp would flip relu's mask and change a gradient outright).
    s = _row_scores(k_rows, live, q_ptr + b64 * D, w_ptr, D, ACC, SCORE_BLOCK_D)
    tau = tl.sum(tl.where(pos == K_OUT, s, 0.0), 0)

    # The weights, recomputed as in the forward.
    r = s - tau
    relu = tl.where(is_sel, tl.where(r <= 0, 0.0, r), 0.0)
    z = tl.sum(relu, 0) + EPS
    m = tl.sum(tl.where(pos == 0, s, 0.0), 0)  # entry 0 holds the largest score (NaN ranks first)
    e = tl.where(used, tl.exp(s - m), 0.0)
    e_sum = tl.sum(e, 0)
    dense = e / tl.where(e_sum > 0, e_sum, 1.0)
    a = tl.where(used, tl.where(sparse_row, relu / z, dense), 0.0)

    # dL/da = grad_weights + <grad_summary, v_j>
    g_a = tl.load(gw_ptr + b64 * K_OUT + pos, mask=is_sel, other=0.0).to(ACC)
    for h0 in tl.static_range(0, H, BLOCK_H):
        hmask = (h0 + offs_h) < H
        gs = tl.load(gs_ptr + b64 * H + h0 + offs_h, mask=hmask, other=0.0).to(ACC)
        v = tl.load(v_rows[:, None] + (h0 + offs_h)[None, :], mask=used[:, None] & hmask[None, :], other=0.0).to(ACC)
        g_a += tl.sum(v * gs[None, :], 1)
        gv = tl.where(used[:, None], a[:, None] * gs[None, :], 0.0)
        tl.store(gv_rows[:, None] + (h0 + offs_h)[None, :], gv.to(gv_ptr.dtype.element_ty),
                 mask=used[:, None] & hmask[None, :])
    g_a = tl.where(used, g_a, 0.0)

    # Jacobian of the sparsifier / softmax.
    centred = g_a - tl.sum(a * g_a, 0)
    g_sparse = tl.where(relu > 0, centred / z, 0.0)
    g_sel = tl.where(used, tl.where(sparse_row, g_sparse, a * centred), 0.0)
    g_tau = tl.where(sparse_row, -tl.sum(g_sel, 0), 0.0)
    g_s = tl.where(is_sel, g_sel, tl.where(pos == K_OUT, g_tau, 0.0))

    # Through tanh: dL/d(q + k_row) per live row; query, key rows (distinct slots), the score_weight partial.
    gk_rows = gk_ptr + (b64 * T64 + rows) * D
    for d0 in tl.static_range(0, D, BLOCK_D):
        dmask = (d0 + offs_d) < D
        q = tl.load(q_ptr + b64 * D + d0 + offs_d, mask=dmask, other=0.0).to(ACC)
        w = tl.load(w_ptr + d0 + offs_d, mask=dmask, other=0.0).to(ACC)
        kr = tl.load(k_rows[:, None] + (d0 + offs_d)[None, :], mask=live[:, None] & dmask[None, :], other=0.0).to(ACC)
        hid = _tanh(q[None, :] + kr)
        d_pre = tl.where(live[:, None], g_s[:, None] * (1.0 - hid * hid) * w[None, :], 0.0)
        tl.store(gq_ptr + b64 * D + d0 + offs_d, tl.sum(d_pre, 0).to(gq_ptr.dtype.element_ty), mask=dmask)
        gw_part = tl.sum(tl.where(live[:, None], g_s[:, None] * hid, 0.0), 0)
        tl.store(gwp_ptr + b64 * D + d0 + offs_d, gw_part, mask=dmask)
        tl.store(gk_rows[:, None] + (d0 + offs_d)[None, :], d_pre.to(gk_ptr.dtype.element_ty),
                 mask=live[:, None] & dmask[None, :])
