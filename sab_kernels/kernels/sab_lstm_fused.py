"""The fused SAB-LSTM sequence: one kernel call for the forward of a whole sequence, one for its backward, on
either of two kernel sets with one contract: the C++ kernels on CPU (csrc/sab_lstm.cpp, backend "cpu") and the
Triton kernels (sab_lstm_triton.py, backend "triton": CUDA, or the interpreter). `SABLSTM` picks this path when
the kernels can run; the per-step path (sab_kernels/nn) is its twin and the tests hold them equal.

    sequence(x, h0, c0, memory, slots, cell, attention, k_top, k_att, k_trunc, step0, stats=None, eps=1e-7,
             backend="cpu")
        -> (out (T, B, 2H), h_n (B, H), c_n (B, H), memory_out (B, n, H), slots_out)

x (T, B, I); h0, c0 (B, H); memory (B, n0, H) the slots before this call (n0 >= 1; the module passes h0 as
the one slot of a new sequence), graph-connected to whatever produced them; `slots` the SlotBuffers that
hold them (or None: new buffers are made from `memory`); cell = (weight_ih (4H, I), weight_hh (4H, H),
bias_ih (4H,), bias_hh (4H,)); attention = (W_h (D, H), b (D,), W_m (D, H), w (D,)) or None when k_top = 0.
step0 is the global index of the first step (the phase of truncation and slot writes when a sequence is
processed in chunks); eps is the sparsifier's epsilon (default the paper's 1e-7). `stats`, a dict, receives
{"steps": T, "steps_visited": V} at backward: V counts the steps some gradient reached.

The slots this call writes are appended to the buffers in place (`SlotBuffers.reserve`): nothing of the past
is copied or recomputed, and the backward saves the buffers themselves. memory_out aliases the buffers' first
n rows. Under torch.compile the call goes through the functional custom ops of `sab_lstm_op` instead (same
kernels, bitwise equal), which copy the memory in and out as a pure function must.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..reference import EPS
from . import sab_lstm_op
from .slot_buffers import SlotBuffers, alias, slots_written

DTYPES = (torch.float32, torch.float64)
BACKENDS = ("cpu", "triton")


def available() -> bool:
    """True when the compiled extension carries the fused C++ sequence kernels."""
    return sab_lstm_op.cpu_kernels_available()


def unsupported_reason(x: Tensor, backend: str = "cpu", k_top: Optional[int] = 5,
                       param_dtype: torch.dtype = torch.float32) -> Optional[str]:
    """Why the fused path of `backend` cannot run on x with this k_top (None: dense) and parameters of
    param_dtype, or None when it can."""
    if backend == "triton":
        from . import sab_lstm_triton

        return sab_lstm_triton.unsupported_reason(x, k_top, param_dtype)
    if backend != "cpu":
        return f"the fused kernels are C++ (backend 'cpu') and Triton (backend 'triton'), not {backend!r}"
    if not available():
        return "the compiled CPU extension (sab_kernels._C) is not built"
    if x.device.type != "cpu":
        return f"it runs on CPU tensors, got {x.device}"
    if x.dtype not in DTYPES:
        return f"it supports float32 and float64, got {x.dtype}"
    return None


class _FusedSequence(torch.autograd.Function):
    """Eager calls: the C++ kernels on the caller's slot buffers, appended in place."""

    @staticmethod
    def forward(ctx, config, x, h0, c0, memory, w_ih, w_hh, b_ih, b_hh, wq, bq, wm, w):
        k_top, k_att, k_trunc, step0, stats, eps, slots, n0, backend = config
        kernels = sab_lstm_op.kernels(backend)
        ctx.set_materialize_grads(False)
        empty = x.new_empty(0)
        values, keys = (slots.values, slots.keys) if slots is not None else (empty, empty)
        weights = [t.contiguous() if t is not None else empty for t in (w_ih, w_hh)]
        weights.append((b_ih + b_hh).contiguous())
        weights += [t.contiguous() if t is not None else empty for t in (wq, bq, wm, w)]
        x, h0, c0 = x.contiguous(), h0.contiguous(), c0.contiguous()
        out, h_n, c_n, *saved = kernels.lstm_forward(x, h0, c0, values, keys, n0, *weights, k_top, k_att, k_trunc, step0, eps)
        ctx.save_for_backward(x, h0, c0, *weights, *saved)
        # The buffers as plain attributes, not saved tensors: later calls append rows past this call's, which
        # must not count as modifying what this backward reads (it reads rows below S only).
        ctx.buffers = (values, keys)
        ctx.config = (n0, k_top, k_att, k_trunc, step0, stats, eps, kernels)
        S = n0 + slots_written(x.shape[0], step0, k_att) if k_top > 0 else 0
        memory_out = alias(values, S) if k_top > 0 else x.new_empty((x.shape[1], 0, h0.shape[1]))
        return out, h_n, c_n, memory_out

    @staticmethod
    @once_differentiable
    def backward(ctx, g_out, g_h, g_c, g_mem):
        n0, k_top, k_att, k_trunc, step0, stats, eps, kernels = ctx.config
        x, h0, c0, *rest = ctx.saved_tensors
        inputs = [x, h0, c0, *ctx.buffers, *rest[:7]]
        saved = list(rest[7:])
        empty = x.new_empty(0)
        grads = [g.contiguous() if g is not None else empty for g in (g_out, g_h, g_c, g_mem)]
        with torch.autocast(x.device.type, enabled=False):
            gx, gh0, gc0, gmem, gwih, gwhh, gb, gwq, gbq, gwm, gw, visited = kernels.lstm_backward(
                *grads, inputs, saved, n0, k_top, k_att, k_trunc, step0, ctx.needs_input_grad[1], eps
            )
        if stats is not None:
            stats.update(steps=x.shape[0], steps_visited=int(visited))
        att = (gwq, gbq, gwm, gw) if k_top > 0 else (None,) * 4
        return (None, gx if ctx.needs_input_grad[1] else None, gh0, gc0, gmem if k_top > 0 else None, gwih, gwhh, gb, gb, *att)


def sequence(
    x: Tensor,
    h0: Tensor,
    c0: Tensor,
    memory: Optional[Tensor],
    slots: Optional[SlotBuffers],
    cell: Sequence[Tensor],
    attention: Optional[Sequence[Tensor]],
    k_top: int,
    k_att: int,
    k_trunc: int,
    step0: int = 0,
    stats: Optional[dict] = None,
    eps: float = EPS,
    backend: str = "cpu",
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Optional[SlotBuffers]]:
    """Run the whole sequence through the fused kernels of `backend` (see the module docstring)."""
    reason = unsupported_reason(x, backend, k_top)
    if reason is not None:
        raise RuntimeError(f"the fused SAB-LSTM path cannot run: {reason}")
    attention = tuple(attention) if k_top > 0 else (None,) * 4
    k_top, k_att, k_trunc, step0, eps = int(k_top), int(k_att), int(k_trunc or 0), int(step0), float(eps)
    # Autocast would turn the kernels' matmuls into bfloat16 behind their back: the fused path computes in
    # the parameters' dtype (float32 or float64) and returns that dtype.
    with torch.autocast(x.device.type, enabled=False):
        if torch.compiler.is_compiling():
            out, h_n, c_n, memory_out = sab_lstm_op.sequence(x, h0, c0, memory, *cell, *attention, k_top, k_att, k_trunc,
                                                             step0, eps, backend)
            return out, h_n, c_n, memory_out, None
        n0 = 0
        if k_top > 0:
            n0 = memory.shape[1]
            extra = slots_written(x.shape[0], step0, k_att)
            wm = attention[2]
            slots = slots.reserve(n0, extra, wm) if slots is not None else SlotBuffers.from_slots(memory.detach(), wm, extra)
        else:
            slots, memory = None, None
        out, h_n, c_n, memory_out = _FusedSequence.apply(
            (k_top, k_att, k_trunc, step0, stats, eps, slots, n0, backend), x, h0, c0, memory, *cell, *attention
        )
        return out, h_n, c_n, memory_out, slots
