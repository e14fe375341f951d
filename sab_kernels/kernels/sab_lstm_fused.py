"""The fused SAB-RNN sequence (LSTM or GRU cell): one kernel call for the forward of a whole sequence, one for
its backward, on either of two kernel sets with one contract: the C++ kernels on CPU (csrc/sab_lstm.cpp, backend
"cpu") and the Triton kernels (sab_lstm_triton.py, backend "triton": CUDA, or the interpreter; LSTM with an
unbounded memory only). `SABLSTM` picks this path when the kernels can run; the per-step path (sab_kernels/nn)
is its twin and the tests hold them equal.

    sequence(x, h0, c0, memory, slots, cell, attention, k_top, k_att, k_trunc, step0=0, stats=None, eps=1e-7,
             backend="cpu", cell_type="lstm", index=None)
        -> FusedResult(out (T, B, 2H), h_n (B, H), c_n (B, H) or None (GRU), memory (B, n, H), slots, index)

x (T, B, I); h0, c0 (B, H); memory (B, n0, H) the slots before this call (n0 >= 1; the module passes h0 as
the one slot of a new sequence), graph-connected to whatever produced them; `slots` the SlotBuffers that
hold them (or None: new buffers are made from `memory`); cell = (weight_ih (GH, I), weight_hh (GH, H),
bias_ih (GH,), bias_hh (GH,)) in nn.LSTMCell's layout (G = 4, gates i, f, g, o) or nn.GRUCell's (G = 3, gates
r, z, n; c0 is ignored and c_n is None); attention = (W_h (D, H), b (D,), W_m (D, H), w (D,)) or None when k_top = 0.
step0 is the global index of the first step (the phase of truncation and slot writes when a sequence is
processed in chunks); eps is the sparsifier's epsilon (default the paper's 1e-7). `stats`, a dict, receives
{"steps": T, "steps_visited": V} at backward: V counts the steps some gradient reached.

`index`, a `SlotIndex` (bounded_slots.py), makes the memory bounded (relevancy screening): each step attends
over the row's active slots only, and the call returns the index it ends with (a new one; the given one is
not changed). It must describe the n0 slots of `memory`. Every slot is still written into the buffers at its
global position, so the backward is the unbounded one.

The slots this call writes are appended to the buffers in place (`SlotBuffers.reserve`): nothing of the past
is copied or recomputed, and the backward saves the buffers themselves. memory_out aliases the buffers' first
n rows. Under torch.compile the call goes through the functional custom ops of `sab_lstm_op` instead (same
kernels, bitwise equal; either cell, bounded or not), which copy the memory in and out as a pure function must.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple, Optional, Sequence

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..reference import EPS
from . import sab_lstm_op
from .slot_buffers import SlotBuffers, alias, slots_written

if TYPE_CHECKING:
    from .bounded_slots import SlotIndex

DTYPES = (torch.float32, torch.float64)
BACKENDS = ("cpu", "triton")
CELLS = ("lstm", "gru")
_CELL_ID = {"lstm": 0, "gru": 1}  # csrc/sab_host.h: kCellLstm, kCellGru


class FusedResult(NamedTuple):
    """What `sequence` returns. c_n is None for a GRU; index is None for an unbounded memory."""

    out: Tensor
    h_n: Tensor
    c_n: Optional[Tensor]
    memory: Tensor
    slots: Optional[SlotBuffers]
    index: Optional[SlotIndex]


def available() -> bool:
    """True when the compiled extension carries the fused C++ sequence kernels."""
    return sab_lstm_op.cpu_kernels_available()


def unsupported_reason(x: Tensor, backend: str = "cpu", k_top: Optional[int] = 5,
                       param_dtype: torch.dtype = torch.float32, cell_type: str = "lstm",
                       bounded: bool = False) -> Optional[str]:
    """Why the fused path of `backend` cannot run on x with this k_top (None: dense), parameters of param_dtype,
    this cell ("lstm" or "gru") and memory (bounded: relevancy screening, a SlotIndex), or None when it can."""
    if cell_type not in CELLS:
        return f"the fused kernels run the cells {CELLS}, not {cell_type!r}"
    if backend == "triton":
        from . import sab_lstm_triton

        return sab_lstm_triton.unsupported_reason(x, k_top, param_dtype, cell_type, bounded)
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
    """Eager calls: the kernels on the caller's slot buffers, appended in place. The C++ kernels run either cell
    and the bounded memory (rnn_forward/rnn_backward); the Triton ones the LSTM with an unbounded memory
    (lstm_forward/lstm_backward, one bias b_ih + b_hh)."""

    @staticmethod
    def forward(ctx, config, x, h0, c0, memory, w_ih, w_hh, b_ih, b_hh, wq, bq, wm, w):
        k_top, k_att, k_trunc, step0, stats, eps, slots, n0, backend, cell, index, result, keep = config
        kernels = sab_lstm_op.kernels(backend)
        ctx.set_materialize_grads(False)
        empty = x.new_empty(0)
        values, keys = (slots.values, slots.keys) if slots is not None else (empty, empty)
        weights = [t.contiguous() if t is not None else empty for t in (w_ih, w_hh)]
        att = [t.contiguous() if t is not None else empty for t in (wq, bq, wm, w)]
        x, h0 = x.contiguous(), h0.contiguous()
        c0 = c0.contiguous() if c0 is not None else empty
        if backend == "cpu":
            biases = [b_ih.contiguous(), b_hh.contiguous()]
            if index is not None:
                bound = (index.recent, index.relevant, index.active.contiguous(), index.relevance.contiguous(),
                         index.count, index.kept)
            else:
                bound = (0, 0, empty.long(), empty, 0, 0)
            outs = kernels.rnn_forward(_CELL_ID[cell], x, h0, c0, values, keys, n0, *weights, *biases, *att, k_top,
                                       k_att, k_trunc, step0, eps, *bound, keep)
            out, h_n, c_n, *saved = outs[:13]
            if index is not None:
                from .bounded_slots import SlotIndex

                active, relevance, counts = outs[13:]
                count, kept = counts.tolist()
                result["index"] = SlotIndex(index.recent, index.relevant, active, relevance, count, kept)
            inputs = [*weights, *biases, *att]  # w_ih, w_hh, b_ih, b_hh, wq, bq, wm, w
        else:
            bias = (b_ih + b_hh).contiguous()
            out, h_n, c_n, *saved = kernels.lstm_forward(x, h0, c0, values, keys, n0, *weights, bias, *att, k_top,
                                                         k_att, k_trunc, step0, eps)
            inputs = [*weights, bias, *att]
        ctx.save_for_backward(x, h0, c0, *inputs, *saved)
        ctx.n_inputs = len(inputs)
        # The buffers as plain attributes, not saved tensors: later calls append rows past this call's, which
        # must not count as modifying what this backward reads (it reads rows below S only).
        ctx.buffers = (values, keys)
        ctx.config = (n0, k_top, k_att, k_trunc, step0, stats, eps, kernels, backend, cell)
        S = n0 + slots_written(x.shape[0], step0, k_att) if k_top > 0 else 0
        memory_out = alias(values, S) if k_top > 0 else x.new_empty((x.shape[1], 0, h0.shape[1]))
        return out, h_n, c_n, memory_out

    @staticmethod
    @once_differentiable
    def backward(ctx, g_out, g_h, g_c, g_mem):
        n0, k_top, k_att, k_trunc, step0, stats, eps, kernels, backend, cell = ctx.config
        x, h0, c0, *rest = ctx.saved_tensors
        m = ctx.n_inputs
        empty = x.new_empty(0)
        grads = [g.contiguous() if g is not None else empty for g in (g_out, g_h, g_c, g_mem)]
        need_x = ctx.needs_input_grad[1]
        with torch.autocast(x.device.type, enabled=False):
            if backend == "cpu":
                w_ih, w_hh, b_ih, b_hh, *att = rest[:m]
                inputs = [x, h0, c0, *ctx.buffers, w_ih, w_hh, b_ih, *att, b_hh]
                gx, gh0, gc0, gmem, gwih, gwhh, gb, gwq, gbq, gwm, gw, visited, gbhh = kernels.rnn_backward(
                    _CELL_ID[cell], *grads, inputs, list(rest[m:]), n0, k_top, k_att, k_trunc, step0, need_x, eps
                )
                if cell == "lstm":
                    gbhh = gb
            else:
                inputs = [x, h0, c0, *ctx.buffers, *rest[:m]]
                gx, gh0, gc0, gmem, gwih, gwhh, gb, gwq, gbq, gwm, gw, visited = kernels.lstm_backward(
                    *grads, inputs, list(rest[m:]), n0, k_top, k_att, k_trunc, step0, need_x, eps
                )
                gbhh = gb
        if stats is not None:
            stats.update(steps=x.shape[0], steps_visited=int(visited))
        att = (gwq, gbq, gwm, gw) if k_top > 0 else (None,) * 4
        return (None, gx if need_x else None, gh0, gc0 if cell == "lstm" else None, gmem if k_top > 0 else None,
                gwih, gwhh, gb, gbhh, *att)


def sequence(
    x: Tensor,
    h0: Tensor,
    c0: Optional[Tensor],
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
    cell_type: str = "lstm",
    index: Optional[SlotIndex] = None,
) -> FusedResult:
    """Run the whole sequence through the fused kernels of `backend` (see the module docstring)."""
    if cell_type not in CELLS:
        raise ValueError(f"cell_type must be one of {CELLS}, got {cell_type!r}")
    if index is not None:
        from .bounded_slots import SlotIndex
    if index is not None and not isinstance(index, SlotIndex):
        raise TypeError(f"index must be a SlotIndex or None, got {type(index).__name__}")
    if index is not None and not k_top:
        raise ValueError("a bounded memory (index) needs attention (k_top > 0)")
    reason = unsupported_reason(x, backend, k_top, cell_type=cell_type, bounded=index is not None)
    if reason is not None:
        raise RuntimeError(f"the fused SAB-RNN path cannot run: {reason}")
    if cell_type == "lstm" and c0 is None:
        raise ValueError("the LSTM cell needs c0 (B, H)")
    if index is not None and index.active.shape[0] != x.shape[1]:
        raise ValueError(f"the index describes {index.active.shape[0]} rows, x has {x.shape[1]}")
    attention = tuple(attention) if k_top > 0 else (None,) * 4
    k_top, k_att, k_trunc, step0, eps = int(k_top), int(k_att), int(k_trunc or 0), int(step0), float(eps)
    # Autocast would turn the kernels' matmuls into bfloat16 behind their back: the fused path computes in
    # the parameters' dtype (float32 or float64) and returns that dtype.
    with torch.autocast(x.device.type, enabled=False):
        if torch.compiler.is_compiling():
            out, h_n, c_n, memory_out, new_index = sab_lstm_op.sequence(
                x, h0, c0, memory, *cell, *attention, k_top, k_att, k_trunc, step0, eps, backend, cell_type, index)
            return FusedResult(out, h_n, c_n, memory_out, None, new_index)
        n0 = 0
        if k_top > 0:
            n0 = memory.shape[1]
            extra = slots_written(x.shape[0], step0, k_att)
            wm = attention[2]
            slots = slots.reserve(n0, extra, wm) if slots is not None else SlotBuffers.from_slots(memory.detach(), wm, extra)
        else:
            slots, memory = None, None
        result = {}
        gru = cell_type == "gru"
        # Whether a backward can run: without one the kernels keep one step's arrays instead of T steps'.
        keep = torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (x, h0, None if gru else c0, memory, *cell, *attention))
        out, h_n, c_n, memory_out = _FusedSequence.apply(
            (k_top, k_att, k_trunc, step0, stats, eps, slots, n0, backend, cell_type, index, result, keep), x, h0,
            None if gru else c0, memory, *cell, *attention
        )
        return FusedResult(out, h_n, None if gru else c_n, memory_out, slots, result.get("index"))
