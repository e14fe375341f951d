"""The fused SAB-LSTM sequence on CPU: one C++ call for the forward of a whole sequence, one for its backward
(csrc/sab_lstm.cpp). `SABLSTM` picks this path for CPU tensors when the extension is built; the per-step
path (sab_kernels/nn) is its twin and the tests hold the two equal.

    sequence(x, h0, c0, memory, cell, attention, k_top, k_att, k_trunc, step0, stats=None)
        -> (out (T, B, 2H), h_n (B, H), c_n (B, H), memory_out (B, n, H))

x (T, B, I); h0, c0 (B, H); memory (B, n0, H) the slots before this call (n0 >= 1; the module passes h0 as
the one slot of a new sequence); cell = (weight_ih (4H, I), weight_hh (4H, H), bias_ih (4H,), bias_hh (4H,));
attention = (W_h (D, H), b (D,), W_m (D, H), w (D,)) or None when k_top = 0. step0 is the global index of the
first step (the phase of truncation and slot writes when a sequence is processed in chunks); eps is the
sparsifier's epsilon (default the paper's 1e-7). `stats`, a dict,
receives {"steps": T, "steps_visited": V} at backward: V counts the steps some gradient reached.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..reference import EPS
from .cpu_backend import _C

DTYPES = (torch.float32, torch.float64)


def available() -> bool:
    """True when the compiled extension carries the fused sequence kernels."""
    return _C is not None and hasattr(_C, "lstm_forward")


def unsupported_reason(x: Tensor) -> Optional[str]:
    """Why the fused path cannot run on x, or None when it can."""
    if not available():
        return "the compiled CPU extension (sab_kernels._C) is not built"
    if x.device.type != "cpu":
        return f"it runs on CPU tensors, got {x.device}"
    if x.dtype not in DTYPES:
        return f"it supports float32 and float64, got {x.dtype}"
    return None


class _FusedSequence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, config, x, h0, c0, memory, w_ih, w_hh, b_ih, b_hh, wq, bq, wm, w):
        k_top, k_att, k_trunc, step0, stats, eps = config
        ctx.set_materialize_grads(False)
        empty = x.new_empty(0)
        inputs = [t.contiguous() if t is not None else empty for t in (x, h0, c0, memory, w_ih, w_hh)]
        inputs.append((b_ih + b_hh).contiguous())
        inputs += [t.contiguous() if t is not None else empty for t in (wq, bq, wm, w)]
        out, h_n, c_n, *saved = _C.lstm_forward(*inputs, k_top, k_att, k_trunc, step0, eps)
        ctx.save_for_backward(*inputs, *saved)  # saved[5] is `out` itself
        ctx.config = (k_top, k_trunc, step0, stats, eps)
        values = saved[0]  # the slot buffer (B, n, H) is also the memory passed on
        return out, h_n, c_n, values

    @staticmethod
    @once_differentiable
    def backward(ctx, g_out, g_h, g_c, g_mem):
        k_top, k_trunc, step0, stats, eps = ctx.config
        tensors = ctx.saved_tensors
        inputs, saved = list(tensors[:11]), list(tensors[11:])
        empty = inputs[0].new_empty(0)
        grads = [g.contiguous() if g is not None else empty for g in (g_out, g_h, g_c, g_mem)]
        with torch.autocast("cpu", enabled=False):
            gx, gh0, gc0, gmem, gwih, gwhh, gb, gwq, gbq, gwm, gw, visited = _C.lstm_backward(
                *grads, inputs, saved, k_top, k_trunc, step0, ctx.needs_input_grad[1], eps
            )
        if stats is not None:
            stats.update(steps=inputs[0].shape[0], steps_visited=int(visited))
        att = (gwq, gbq, gwm, gw) if k_top > 0 else (None,) * 4
        return (None, gx if ctx.needs_input_grad[1] else None, gh0, gc0, gmem if k_top > 0 else None, gwih, gwhh, gb, gb, *att)


def sequence(
    x: Tensor,
    h0: Tensor,
    c0: Tensor,
    memory: Tensor,
    cell: Sequence[Tensor],
    attention: Optional[Sequence[Tensor]],
    k_top: int,
    k_att: int,
    k_trunc: int,
    step0: int = 0,
    stats: Optional[dict] = None,
    eps: float = EPS,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Run the whole sequence through the fused kernels (see the module docstring)."""
    reason = unsupported_reason(x)
    if reason is not None:
        raise RuntimeError(f"the fused SAB-LSTM path cannot run: {reason}")
    attention = tuple(attention) if k_top > 0 else (None,) * 4
    # Autocast would turn the kernels' matmuls into bfloat16 behind their back: the fused path computes in
    # the parameters' dtype (float32 or float64) and returns that dtype.
    with torch.autocast("cpu", enabled=False):
        return _FusedSequence.apply(
            (int(k_top), int(k_att), int(k_trunc or 0), int(step0), stats, float(eps)), x, h0, c0, memory, *cell,
            *attention
        )
