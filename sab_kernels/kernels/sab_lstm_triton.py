"""Host side of the fused SAB-LSTM sequence in Triton (kernels: sab_lstm_triton_kernels.py).

`lstm_forward` and `lstm_backward` take and return exactly what the C++ kernels' `_C.lstm_forward` and
`_C.lstm_backward` do (csrc/sab_lstm.cpp), so the autograd glue (sab_lstm_fused.py) and the custom ops
(sab_lstm_op.py) run either. CUDA tensors, or CPU tensors under TRITON_INTERPRET=1 (CI).

A call is: one GEMM for the input half of every gate, one persistent forward launch (grid B: a program per
row runs the whole time loop); for the backward one persistent launch and the weight-gradient GEMMs over all
steps. No host sync: the launch grids and every size are known from the arguments.
"""

from __future__ import annotations

from typing import List, Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..reference import EPS
from . import triton_interpreter_enabled
from .slot_buffers import slots_written
from .sab_lstm_triton_kernels import _sab_lstm_bwd_kernel, _sab_lstm_fwd_kernel
from .triton_backend import LAUNCH_OPTIONS

DTYPES = (torch.float32, torch.float64)
HALF = (torch.bfloat16, torch.float16)  # inputs only: upcast, with float32 parameters, state and accumulation
MAX_K_PAD = 256  # k_top + 1 rounded up: larger k (dense attention) runs on the per-step path


def _pow2(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))


def _acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def unsupported_reason(x: Tensor, k_top: Optional[int], param_dtype: torch.dtype = torch.float32,
                       cell_type: str = "lstm", bounded: bool = False) -> Optional[str]:
    """Why the Triton fused path cannot run on x with this k_top (None: dense), parameters of param_dtype, this
    cell and memory, or None when it can. bfloat16/float16 inputs run upcast to float32 parameters' dtype."""
    if cell_type != "lstm":
        return f"the Triton fused kernels run the LSTM cell only, not {cell_type!r} (the C++ kernels run the GRU)"
    if bounded:
        return ("the Triton fused kernels have no bounded memory (relevancy screening) yet; the C++ kernels and the "
                "per-step path do")
    if x.device.type != "cuda" and not triton_interpreter_enabled():
        return f"the Triton kernels need CUDA tensors (or TRITON_INTERPRET=1), got {x.device}"
    if x.dtype in HALF and param_dtype != torch.float32:
        return f"{x.dtype} inputs run with float32 parameters (float32 state and accumulation), got {param_dtype} parameters"
    if x.dtype not in DTYPES + HALF:
        return f"the Triton fused path supports float32 and float64, and bfloat16/float16 inputs, got {x.dtype}"
    if k_top is None or _pow2(k_top + 1) > MAX_K_PAD:
        return (f"k_top={k_top} keeps more than {MAX_K_PAD - 1} slots (dense attention): its top-k set would not fit "
                "a program's registers")
    return None


def blocks(H: int, D: int, interpreted: bool) -> dict:
    """Tile sizes and warps of both kernels. The interpreter runs one program after another on numpy: whole
    tiles are fastest there. On a GPU (sm_90): key tiles of 4K elements; matrix-vector tiles of (max(H, D),
    BLOCK_MV) with 4K elements and 8 warps in the forward, 2K elements and 4 warps in the backward. Chosen from
    the cubins' resource usage (bench/triton_registers.py, Triton 3.7.1 with libdevice tanh): neither kernel
    spills for float32 at H = D = 64, 128, 256, where 4-warp forwards and 4K-element backward tiles did."""
    H_PAD, D_PAD = _pow2(H), _pow2(max(D, 1))
    wide = max(H_PAD, D_PAD)
    if interpreted:
        return dict(H_PAD=H_PAD, D_PAD=D_PAD, BLOCK_T=64, BLOCK_D=min(D_PAD, 256), BLOCK_H=min(H_PAD, 256),
                    MV_FWD=wide, MV_BWD=wide, WARPS_FWD=1, WARPS_BWD=1)
    block_d = min(D_PAD, 128)
    return dict(H_PAD=H_PAD, D_PAD=D_PAD, BLOCK_T=max(16, 4096 // block_d), BLOCK_D=block_d, BLOCK_H=min(H_PAD, 64),
                MV_FWD=max(1, min(wide, 4096 // wide)), MV_BWD=max(1, min(wide, 2048 // wide)), WARPS_FWD=8,
                WARPS_BWD=4)


def lstm_forward(x, h0, c0, values, keys, n0: int, w_ih, w_hh, bias, wq, bq, wm, w, k_top: int, k_att: int,
                 k_trunc: int, step0: int, eps: float) -> List[Tensor]:
    """(out, h_n, c_n, G, C, TC, HH, out, Q, W, IDX, THR, SLOT), as `_C.lstm_forward` (see the module docstring)."""
    T, B, I = x.shape
    H = h0.shape[1]
    mem = k_top > 0
    D = wq.shape[0] if mem else 0
    S = n0 + slots_written(T, step0, k_att) if mem else 0
    k = min(k_top, S) if mem else 0
    Tm = T if mem else 0
    opts = dict(dtype=x.dtype, device=x.device)
    G = torch.addmm(bias, x.reshape(T * B, I), w_ih.t()).view(T, B, 4 * H)
    out = torch.empty((T, B, 2 * H), **opts)
    C, TC = torch.empty((T, B, H), **opts), torch.empty((T, B, H), **opts)
    HH = torch.empty((Tm, B, H) if mem else (0,), **opts)
    Q = torch.empty((Tm, B, D), **opts)
    W = torch.empty((Tm, B, k), **opts)
    IDX = torch.empty((Tm, B, k), dtype=torch.int64, device=x.device)
    THR = torch.empty((Tm, B), dtype=torch.int64, device=x.device)
    SUM = torch.empty((Tm, B, H), **opts)  # the summaries, read back by the kernel
    if T > 0 and B > 0:
        bl = blocks(H, D, x.device.type != "cuda")
        dummy = x
        att = (wq, bq, wm, w, values, keys) if mem else (dummy,) * 6
        _sab_lstm_fwd_kernel[(B,)](
            G, h0, c0, w_hh, *att,
            out, C, TC, HH if mem else dummy, Q if mem else dummy, W if mem else dummy, IDX if mem else dummy,
            THR if mem else dummy, SUM if mem else dummy,
            T, B, values.shape[1] if mem else 0, n0, step0, k_att, k,
            H=H, D=max(D, 1), H_PAD=bl["H_PAD"], D_PAD=bl["D_PAD"], MEM=mem, K_TOP=max(k, 1), K_PAD=_pow2(k + 1),
            BLOCK_T=bl["BLOCK_T"], BLOCK_D=bl["BLOCK_D"], BLOCK_H=bl["BLOCK_H"], BLOCK_MV=bl["MV_FWD"], ACC=_acc(x.dtype),
            FP64=x.dtype == torch.float64, EPS=float(eps), num_warps=bl["WARPS_FWD"], **LAUNCH_OPTIONS,
        )
    h_n = out[T - 1, :, :H].clone() if T > 0 else h0.clone()
    c_n = C[T - 1].clone() if T > 0 else c0.clone()
    # The slot each step wrote (-1: none), made on the device: a host tensor copied over would sync.
    tg = step0 + torch.arange(T, device=x.device)
    slot = torch.where((tg + 1) % k_att == 0, n0 + tg // k_att - step0 // k_att, -1)
    if not mem:
        slot = torch.full_like(slot, -1)
    return [out, h_n, c_n, G, C, TC, HH, out, Q, W, IDX, THR, slot]


def lstm_backward(g_out, g_h, g_c, g_mem, inputs, saved, n0: int, k_top: int, k_att: int, k_trunc: int, step0: int,
                  need_grad_x: bool, eps: float) -> List[Tensor]:
    """(grad_x, dh0, dc0, grad_memory, dW_ih, dW_hh, d_bias, dW_q, db_q, dW_m, dw, steps visited), as
    `_C.lstm_backward`. Empty tensors stand for "no gradient" in the first four arguments."""
    x, h0, c0, values, keys, w_ih, w_hh, bias, wq, bq, wm, w = inputs
    G, C, TC, HH, out, Q, W, IDX, THR, _slot = saved
    T, B, I = x.shape
    H = h0.shape[1]
    mem = k_top > 0
    D = wq.shape[0] if mem else 0
    S = n0 + slots_written(T, step0, k_att) if mem else 0
    k = IDX.shape[2] if mem else 0
    opts = dict(dtype=x.dtype, device=x.device)
    given = lambda t: t is not None and t.numel() > 0  # noqa: E731
    gh = g_h.contiguous() if given(g_h) else torch.zeros((B, H), **opts)
    gc = g_c.contiguous() if given(g_c) else torch.zeros((B, H), **opts)
    mv = torch.zeros((B, S, H), **opts)  # the value mailboxes; the key mailboxes below
    if mem and given(g_mem):
        mv.copy_(g_mem)
    mk = torch.zeros((B, S, D), **opts)
    dG = torch.empty((T, B, 4 * H), **opts)
    dQ = torch.empty((T if mem else 0, B, D), **opts)
    dh0, dc0 = torch.empty((B, H), **opts), torch.empty((B, H), **opts)
    gwp = torch.zeros((B, max(D, 1)), **opts)
    if T > 0 and B > 0:
        bl = blocks(H, D, x.device.type != "cuda")
        has_gout = given(g_out)
        dummy = x
        _sab_lstm_bwd_kernel[(B,)](
            g_out.contiguous() if has_gout else dummy, gh, gc, G, C, TC, c0, Q if mem else dummy, IDX if mem else dummy,
            THR if mem else dummy, values if mem else dummy, keys if mem else dummy, w_hh, wq if mem else dummy,
            wm if mem else dummy, w if mem else dummy, mv if mem else dummy, mk if mem else dummy,
            dG, dQ if mem else dummy, dh0, dc0, gwp,
            T, B, values.shape[1] if mem else 0, max(S, 1), n0, step0, k_att, k_trunc, k,
            H=H, D=max(D, 1), H_PAD=bl["H_PAD"], D_PAD=bl["D_PAD"], MEM=mem, HAS_GOUT=has_gout, K_PAD=_pow2(k + 1),
            BLOCK_MV=bl["MV_BWD"], ACC=_acc(x.dtype), EPS=float(eps), num_warps=bl["WARPS_BWD"], **LAUNCH_OPTIONS,
        )
    else:
        dG.zero_(), dQ.zero_()
        dh0.copy_(gh), dc0.copy_(gc)
    # Weight gradients: GEMMs over all steps (dW_ih as (x^T dG)^T, the fast shape: see input_projection.py).
    dGf = dG.view(T * B, 4 * H)
    x2 = x.reshape(T * B, I)
    grad_x = (dGf @ w_ih).view(T, B, I) if need_grad_x else x.new_empty(0)
    g_w_ih = (x2.t() @ dGf).t().contiguous()
    h_prev = torch.cat([h0.unsqueeze(0), out[:-1, :, :H]]) if T > 0 else h0.new_empty((0, B, H))
    g_w_hh = dGf.t() @ h_prev.reshape(T * B, H)
    g_bias = dGf.sum(0)
    if mem:
        dQf = dQ.view(T * B, D)
        g_wq, g_bq = dQf.t() @ HH.reshape(T * B, H), dQf.sum(0)
        m = values[:, :S]
        g_wm = mk.reshape(B * S, D).t() @ m.reshape(B * S, H)  # sum over slots of dk_j^T m_j
        g_mem = mv[:, :n0] + mk[:, :n0] @ wm  # the slots this call received: dm = dv + dk W_m
        g_w = gwp.sum(0)
    else:
        g_wq, g_bq, g_wm, g_mem, g_w = (x.new_empty(0) for _ in range(5))
    visited = torch.tensor(T, dtype=torch.int64)
    return [grad_x, dh0, dc0, g_mem, g_w_ih, g_w_hh, g_bias, g_wq, g_bq, g_wm, g_w, visited]
