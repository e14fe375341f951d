"""Triton kernels of the fused SAB-LSTM sequence (SPEC section 2); the host side is sab_lstm_triton.py.

Both kernels are persistent over time: one program owns one batch row and runs the whole time loop, so a call
is one launch for the forward and one for the backward, whatever T (plus the GEMMs over all steps around
them). Rows are independent (each has its own memory), so programs never synchronise with one another.

Forward, step t of row b (the same equations as csrc/sab_lstm.cpp):
    gates = gx_t + W_hh h (gx_t = x_t W_ih^T + b for all steps, one GEMM before the launch); c = f c + i g;
    h_hat = o tanh(c); q = W_q h_hat + b_q; top-(k_top+1) of the n slots' scores with the op's tie rule
    (`_scan_chunk`, `_sorted_top`, `_finish_row` of triton_kernels.py, the op's own code); h = h_hat + s;
    every k_att steps slot n = h and key n = W_m h, appended to the caller's buffers.
    Saved for the backward: activated gates (in place of gx), c, tanh(c), h_hat, q, weights, indices, threshold.
Backward, one reverse sweep of row b: dL/dh_t = the output's + the chain's (unless truncated) + the value
mailbox of the slot step t wrote + that slot's key mailbox folded through W_m; the attention's backward on its
k + 1 entries adds into the mailboxes of the slots it read (distinct within a step: no collision, no atomics,
a fixed order: deterministic); then the cell's backward. Weight gradients are GEMMs over all steps after the
sweep. Every step is computed, also those no gradient reaches (skipping them would need the host).
Matrix-vector products (`_matvec`, `_matvec_t`) are broadcast-multiply-sums over tiles of BLOCK_MV columns (rows),
the vector read back from memory block by block, so register use stays flat in H (no spill at H = 128).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .triton_kernels import _finish_row, _scan_chunk, _sorted_top, _tanh


@triton.jit
def _matvec(w_ptr, v_ptr, ROWS: tl.constexpr, COLS: tl.constexpr, R_PAD: tl.constexpr, BLOCK: tl.constexpr, ACC: tl.constexpr):
    """(R_PAD,) W v for W (ROWS, COLS) row-major at w_ptr and v (COLS,) at v_ptr, BLOCK columns at a time: the
    vector is read from memory in blocks so that no (ROWS, COLS) tile lives in registers."""
    r = tl.arange(0, R_PAD)
    c = tl.arange(0, BLOCK)
    acc = tl.zeros([R_PAD], ACC)
    for c0 in tl.static_range(0, COLS, BLOCK):
        cm = (c0 + c) < COLS
        v = tl.load(v_ptr + c0 + c, mask=cm, other=0.0).to(ACC)
        w = tl.load(w_ptr + r[:, None] * COLS + c0 + c[None, :], mask=(r < ROWS)[:, None] & cm[None, :], other=0.0)
        acc += tl.sum(w.to(ACC) * v[None, :], 1)
    return acc


@triton.jit
def _matvec_t(w_ptr, v_ptr, ROWS: tl.constexpr, COLS: tl.constexpr, C_PAD: tl.constexpr, BLOCK: tl.constexpr, ACC: tl.constexpr):
    """(C_PAD,) W^T v for W (ROWS, COLS) row-major at w_ptr and v (ROWS,) at v_ptr, BLOCK rows at a time."""
    r = tl.arange(0, BLOCK)
    c = tl.arange(0, C_PAD)
    acc = tl.zeros([C_PAD], ACC)
    for r0 in tl.static_range(0, ROWS, BLOCK):
        rm = (r0 + r) < ROWS
        v = tl.load(v_ptr + r0 + r, mask=rm, other=0.0).to(ACC)
        w = tl.load(w_ptr + (r0 + r)[:, None] * COLS + c[None, :], mask=rm[:, None] & (c < COLS)[None, :], other=0.0)
        acc += tl.sum(w.to(ACC) * v[:, None], 0)
    return acc


@triton.jit
def _sab_lstm_fwd_kernel(
    g_ptr, h0_ptr, c0_ptr, whh_ptr, wq_ptr, bq_ptr, wm_ptr, w_ptr, val_ptr, key_ptr,
    out_ptr, c_ptr, tc_ptr, hh_ptr, q_ptr, wts_ptr, idx_ptr, thr_ptr, sum_ptr,
    T, B, CAP, n0, step0, k_att, K_OUT,
    H: tl.constexpr, D: tl.constexpr, H_PAD: tl.constexpr, D_PAD: tl.constexpr, MEM: tl.constexpr,
    K_TOP: tl.constexpr, K_PAD: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_H: tl.constexpr,
    BLOCK_MV: tl.constexpr, ACC: tl.constexpr, FP64: tl.constexpr, EPS: tl.constexpr,
):
    b = tl.program_id(0)
    b64 = b.to(tl.int64)
    oh = tl.arange(0, H_PAD)
    hm = oh < H
    od = tl.arange(0, D_PAD)
    dm = od < D
    c = tl.load(c0_ptr + b64 * H + oh, mask=hm, other=0.0).to(ACC)
    val_row = val_ptr + b64 * CAP * H
    key_row = key_ptr + b64 * CAP * D
    n = n0
    for t in range(T):
        row = tl.cast(t, tl.int64) * B + b64  # (t, b) of a (T, B, .) tensor
        gt = g_ptr + row * 4 * H
        if t > 0:  # h_{t-1}: the previous step's output row, or h0
            h_prev = out_ptr + (row - B) * 2 * H
        else:
            h_prev = h0_ptr + b64 * H
        pre_i = tl.load(gt + oh, mask=hm, other=0.0).to(ACC) + _matvec(whh_ptr, h_prev, H, H, H_PAD, BLOCK_MV, ACC)
        pre_f = tl.load(gt + H + oh, mask=hm, other=0.0).to(ACC) + _matvec(whh_ptr + H * H, h_prev, H, H, H_PAD, BLOCK_MV, ACC)
        pre_g = tl.load(gt + 2 * H + oh, mask=hm, other=0.0).to(ACC) + _matvec(whh_ptr + 2 * H * H, h_prev, H, H, H_PAD, BLOCK_MV, ACC)
        pre_o = tl.load(gt + 3 * H + oh, mask=hm, other=0.0).to(ACC) + _matvec(whh_ptr + 3 * H * H, h_prev, H, H, H_PAD, BLOCK_MV, ACC)
        i = tl.sigmoid(pre_i)
        f = tl.sigmoid(pre_f)
        g = _tanh(pre_g)
        o = tl.sigmoid(pre_o)
        tl.store(gt + oh, i.to(g_ptr.dtype.element_ty), mask=hm)
        tl.store(gt + H + oh, f.to(g_ptr.dtype.element_ty), mask=hm)
        tl.store(gt + 2 * H + oh, g.to(g_ptr.dtype.element_ty), mask=hm)
        tl.store(gt + 3 * H + oh, o.to(g_ptr.dtype.element_ty), mask=hm)
        c = f * c + i * g
        tc = _tanh(c)
        hh = o * tc
        tl.store(c_ptr + row * H + oh, c.to(c_ptr.dtype.element_ty), mask=hm)
        tl.store(tc_ptr + row * H + oh, tc.to(tc_ptr.dtype.element_ty), mask=hm)
        out_row = out_ptr + row * 2 * H
        if MEM:
            tl.store(hh_ptr + row * H + oh, hh.to(hh_ptr.dtype.element_ty), mask=hm)
            tl.debug_barrier()
            q = tl.load(bq_ptr + od, mask=dm, other=0.0).to(ACC) + _matvec(wq_ptr, hh_ptr + row * H, D, H, D_PAD, BLOCK_MV, ACC)
            tl.store(q_ptr + row * D + od, q.to(q_ptr.dtype.element_ty), mask=dm)
            tl.debug_barrier()  # q is read back from memory by the scan
            run_key, run_idx = _scan_chunk(q_ptr + row * D, key_row, w_ptr, 0, n, D, ACC, FP64, K_TOP + 1, K_PAD,
                                           BLOCK_T, BLOCK_D)
            top_key, top_idx = _sorted_top(run_key, run_idx, K_TOP + 1, K_PAD, FP64)
            # _finish_row indexes its outputs by row b; the step's slices start at (t, 0).
            t64 = tl.cast(t, tl.int64)
            _finish_row(b, top_key, top_idx, n, CAP, K_OUT, val_ptr, sum_ptr + t64 * B * H, wts_ptr + t64 * B * K_OUT,
                        idx_ptr + t64 * B * K_OUT, thr_ptr + t64 * B, H, ACC, FP64, K_TOP, K_PAD, BLOCK_H, EPS)
            tl.debug_barrier()
            s = tl.load(sum_ptr + row * H + oh, mask=hm, other=0.0).to(ACC)
            h = hh + s
            tl.store(out_row + oh, h.to(out_ptr.dtype.element_ty), mask=hm)
            tl.store(out_row + H + oh, s.to(out_ptr.dtype.element_ty), mask=hm)
            tl.debug_barrier()  # h is read back in blocks (the key below, the next step's gates)
            if (step0 + t + 1) % k_att == 0:
                n64 = tl.cast(n, tl.int64)
                tl.store(val_row + n64 * H + oh, h.to(val_ptr.dtype.element_ty), mask=hm)
                key = _matvec(wm_ptr, out_row, D, H, D_PAD, BLOCK_MV, ACC)
                tl.store(key_row + n64 * D + od, key.to(key_ptr.dtype.element_ty), mask=dm)
                tl.debug_barrier()  # the next steps read this slot
                n += 1
        else:
            tl.store(out_row + oh, hh.to(out_ptr.dtype.element_ty), mask=hm)
            tl.store(out_row + H + oh, tl.zeros([H_PAD], ACC).to(out_ptr.dtype.element_ty), mask=hm)
            tl.debug_barrier()


@triton.jit
def _attend_backward(gs, q_row, key_row, val_row, w_ptr, idx_row, thr_slot, mv_row, mk_row, K_OUT,
                     H: tl.constexpr, D: tl.constexpr, H_PAD: tl.constexpr, D_PAD: tl.constexpr,
                     ACC: tl.constexpr, K_PAD: tl.constexpr, EPS: tl.constexpr):
    """The op's backward (as `_bwd_kernel`) for one step of one row, grad_weights = 0: returns (grad_query (D_PAD,),
    score_weight partial (D_PAD,)) and adds the value and key gradients of the k + 1 entries into the row's
    mailboxes (entries hold distinct slots: no two adds meet)."""
    pos = tl.arange(0, K_PAD)
    is_sel = pos < K_OUT
    sel = tl.load(idx_row + pos, mask=is_sel, other=-1)
    raw = tl.where(is_sel, sel, tl.where(pos == K_OUT, thr_slot, -1))
    live = raw >= 0
    used = is_sel & live
    sparse_row = (tl.zeros([K_PAD], tl.int64) + thr_slot) >= 0
    rows = tl.maximum(raw, 0).to(tl.int64)
    od = tl.arange(0, D_PAD)
    dm = od < D
    oh = tl.arange(0, H_PAD)
    hm = oh < H
    q = tl.load(q_row + od, mask=dm, other=0.0).to(ACC)
    w = tl.load(w_ptr + od, mask=dm, other=0.0).to(ACC)
    kr = tl.load(key_row + rows[:, None] * D + od[None, :], mask=live[:, None] & dm[None, :], other=0.0).to(ACC)
    hid = _tanh(q[None, :] + kr)
    s = tl.sum(hid * w[None, :], 1)
    tau = tl.sum(tl.where(pos == K_OUT, s, 0.0), 0)
    r = s - tau
    relu = tl.where(is_sel, tl.where(r <= 0, 0.0, r), 0.0)
    z = tl.sum(relu, 0) + EPS
    m = tl.sum(tl.where(pos == 0, s, 0.0), 0)
    e = tl.where(used, tl.exp(s - m), 0.0)
    e_sum = tl.sum(e, 0)
    dense = e / tl.where(e_sum > 0, e_sum, 1.0)
    a = tl.where(used, tl.where(sparse_row, relu / z, dense), 0.0)
    v = tl.load(val_row + rows[:, None] * H + oh[None, :], mask=used[:, None] & hm[None, :], other=0.0).to(ACC)
    g_a = tl.where(used, tl.sum(v * gs[None, :], 1), 0.0)
    centred = g_a - tl.sum(a * g_a, 0)
    g_sparse = tl.where(relu > 0, centred / z, 0.0)
    g_sel = tl.where(used, tl.where(sparse_row, g_sparse, a * centred), 0.0)
    g_tau = tl.where(sparse_row, -tl.sum(g_sel, 0), 0.0)
    g_s = tl.where(is_sel, g_sel, tl.where(pos == K_OUT, g_tau, 0.0))
    d_pre = tl.where(live[:, None], g_s[:, None] * (1.0 - hid * hid) * w[None, :], 0.0)
    gw_part = tl.sum(tl.where(live[:, None], g_s[:, None] * hid, 0.0), 0)
    # Into the mailboxes: value gradient a_j gs of the selected slots, key gradient of every live entry.
    mv_ptrs = mv_row + rows[:, None] * H + oh[None, :]
    vmask = used[:, None] & hm[None, :]
    mv = tl.load(mv_ptrs, mask=vmask, other=0.0)
    tl.store(mv_ptrs, (mv.to(ACC) + a[:, None] * gs[None, :]).to(mv_row.dtype.element_ty), mask=vmask)
    mk_ptrs = mk_row + rows[:, None] * D + od[None, :]
    kmask = live[:, None] & dm[None, :]
    mk = tl.load(mk_ptrs, mask=kmask, other=0.0)
    tl.store(mk_ptrs, (mk.to(ACC) + d_pre).to(mk_row.dtype.element_ty), mask=kmask)
    return tl.sum(d_pre, 0), gw_part


@triton.jit
def _sab_lstm_bwd_kernel(
    gout_ptr, gh_ptr, gc_ptr, g_ptr, c_ptr, tc_ptr, c0_ptr, q_ptr, idx_ptr, thr_ptr, val_ptr, key_ptr,
    whh_ptr, wq_ptr, wm_ptr, w_ptr, mv_ptr, mk_ptr,
    dg_ptr, dq_ptr, dh0_ptr, dc0_ptr, gwp_ptr,
    T, B, CAP, S, n0, step0, k_att, k_trunc, K_OUT,
    H: tl.constexpr, D: tl.constexpr, H_PAD: tl.constexpr, D_PAD: tl.constexpr, MEM: tl.constexpr, HAS_GOUT: tl.constexpr,
    K_PAD: tl.constexpr, BLOCK_MV: tl.constexpr, ACC: tl.constexpr, EPS: tl.constexpr,
):
    b = tl.program_id(0)
    b64 = b.to(tl.int64)
    oh = tl.arange(0, H_PAD)
    hm = oh < H
    od = tl.arange(0, D_PAD)
    dm = od < D
    gh = tl.load(gh_ptr + b64 * H + oh, mask=hm, other=0.0).to(ACC)  # the chain's dL/dh
    gc = tl.load(gc_ptr + b64 * H + oh, mask=hm, other=0.0).to(ACC)  # the chain's dL/dc
    gw_acc = tl.zeros([D_PAD], ACC)
    val_row = val_ptr + b64 * CAP * H
    key_row = key_ptr + b64 * CAP * D
    mv_row = mv_ptr + b64 * S * H
    mk_row = mk_ptr + b64 * S * D
    n = n0 + (step0 + T) // k_att - step0 // k_att  # slots after the last step
    for tt in range(T):
        t = T - 1 - tt
        row = tl.cast(t, tl.int64) * B + b64
        tg = step0 + t
        if HAS_GOUT:
            gh += tl.load(gout_ptr + row * 2 * H + oh, mask=hm, other=0.0).to(ACC)
        g_hh = gh
        if MEM:
            if (tg + 1) % k_att == 0:  # this step wrote slot n - 1: its mailboxes are complete
                n -= 1
                n64 = tl.cast(n, tl.int64)
                gh += tl.load(mv_row + n64 * H + oh, mask=hm, other=0.0).to(ACC)
                gh += _matvec_t(wm_ptr, mk_row + n64 * D, D, H, H_PAD, BLOCK_MV, ACC)  # dL/dk W_m
            gs = gh
            if HAS_GOUT:
                gs += tl.load(gout_ptr + row * 2 * H + H + oh, mask=hm, other=0.0).to(ACC)
            thr_slot = tl.load(thr_ptr + row)
            gq, gw_part = _attend_backward(gs, q_ptr + row * D, key_row, val_row, w_ptr, idx_ptr + row * K_OUT, thr_slot,
                                           mv_row, mk_row, K_OUT, H, D, H_PAD, D_PAD, ACC, K_PAD, EPS)
            tl.debug_barrier()  # the mailbox adds are read by earlier steps
            gw_acc += gw_part
            tl.store(dq_ptr + row * D + od, gq.to(dq_ptr.dtype.element_ty), mask=dm)
            tl.debug_barrier()
            g_hh = gh + _matvec_t(wq_ptr, dq_ptr + row * D, D, H, H_PAD, BLOCK_MV, ACC)
        # The cell: gates activated (i, f, g, o), c = f c_prev + i g, h_hat = o tanh(c).
        gt = g_ptr + row * 4 * H
        i = tl.load(gt + oh, mask=hm, other=0.0).to(ACC)
        f = tl.load(gt + H + oh, mask=hm, other=0.0).to(ACC)
        g = tl.load(gt + 2 * H + oh, mask=hm, other=0.0).to(ACC)
        o = tl.load(gt + 3 * H + oh, mask=hm, other=0.0).to(ACC)
        tc = tl.load(tc_ptr + row * H + oh, mask=hm, other=0.0).to(ACC)
        if t > 0:
            c_prev = tl.load(c_ptr + (row - B) * H + oh, mask=hm, other=0.0).to(ACC)
        else:
            c_prev = tl.load(c0_ptr + b64 * H + oh, mask=hm, other=0.0).to(ACC)
        dc = gc + g_hh * o * (1.0 - tc * tc)
        d_i = dc * g * i * (1.0 - i)
        d_f = dc * c_prev * f * (1.0 - f)
        d_g = dc * i * (1.0 - g * g)
        d_o = g_hh * tc * o * (1.0 - o)
        dgt = dg_ptr + row * 4 * H
        tl.store(dgt + oh, d_i.to(dg_ptr.dtype.element_ty), mask=hm)
        tl.store(dgt + H + oh, d_f.to(dg_ptr.dtype.element_ty), mask=hm)
        tl.store(dgt + 2 * H + oh, d_g.to(dg_ptr.dtype.element_ty), mask=hm)
        tl.store(dgt + 3 * H + oh, d_o.to(dg_ptr.dtype.element_ty), mask=hm)
        tl.debug_barrier()
        truncated = (k_trunc > 0) & ((tg + 1) % tl.maximum(k_trunc, 1) == 0)
        if truncated:  # h, c were detached before this step's cell
            gh = tl.zeros([H_PAD], ACC)
            gc = tl.zeros([H_PAD], ACC)
        else:
            gh = _matvec_t(whh_ptr, dgt, 4 * H, H, H_PAD, BLOCK_MV, ACC)  # W_hh^T dG
            gc = dc * f
    tl.store(dh0_ptr + b64 * H + oh, gh.to(dh0_ptr.dtype.element_ty), mask=hm)
    tl.store(dc0_ptr + b64 * H + oh, gc.to(dc0_ptr.dtype.element_ty), mask=hm)
    tl.store(gwp_ptr + b64 * D + od, gw_acc.to(gwp_ptr.dtype.element_ty), mask=dm)
