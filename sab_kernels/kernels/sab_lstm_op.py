"""The fused SAB-RNN sequence as `torch.library` custom ops, so torch.compile(fullgraph=True) traces it.

    sab::lstm_sequence_forward(x, h0, c0?, memory, weight_ih, weight_hh, bias_ih, bias_hh, W_h?, b?, W_m?, w?,
                               k_top, k_att, k_trunc, step0, eps, backend, cell_type="lstm", recent=0,
                               relevant=0, active?, relevance?, count=0, kept=0)
        -> (out (T, B, 2H), h_n (B, H), c_n (B, H) or (0,) for a GRU, memory_out (B, S, H), what the backward
            reads, and the bounded memory's new active (B, A) and relevance (B, A), (0,) when unbounded)
    sab::lstm_sequence_backward(...) -> the gradients of the forward's tensor inputs

Both run the kernels of `backend` ("cpu": the C++ kernels of csrc/sab_lstm.cpp; "triton": sab_lstm_triton.py),
as the eager path (`sab_lstm_fused._FusedSequence`) does, so the two give equal results (tested). A custom op must be a pure function: it cannot append into
buffers that another tensor aliases, so here the memory is copied into fresh buffers of exactly S slots and
the earlier slots' keys are recomputed. That is O(n) per call: fine for a compiled model that runs whole
sequences or long chunks; streaming one step per call belongs to the eager path.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor

from .cpu_backend import _C
from .slot_buffers import SlotBuffers, slots_written

_CELL_ID = {"lstm": 0, "gru": 1}  # csrc/sab_host.h: kCellLstm, kCellGru


def cpu_kernels_available() -> bool:
    return _C is not None and hasattr(_C, "lstm_forward")


def kernels(backend: str):
    """The kernel set of `backend`: an object with lstm_forward and lstm_backward (the contract of
    csrc/sab_lstm.cpp)."""
    if backend == "triton":
        from . import sab_lstm_triton

        return sab_lstm_triton
    return _C


def _empty(x: Tensor) -> Tensor:
    return x.new_empty(0)


def index_counts(count: int, kept: int, recent: int, relevant: int, writes: int) -> Tuple[int, int]:
    """(count, kept) of a bounded memory after `writes` slot writes: bounded_slots.SlotIndex.write's rule, which
    never depends on the values, so the op's callers know them without reading its outputs."""
    for _ in range(writes):
        count += 1
        if count - kept > recent:
            if kept < relevant:
                kept += 1
            else:
                count -= 1
    return count, kept


@torch.library.custom_op("sab::lstm_sequence_forward", mutates_args=())
def _forward_op(
    x: Tensor, h0: Tensor, c0: Optional[Tensor], memory: Optional[Tensor], weight_ih: Tensor, weight_hh: Tensor,
    bias_ih: Tensor, bias_hh: Tensor, query_weight: Optional[Tensor], query_bias: Optional[Tensor],
    key_weight: Optional[Tensor], score_weight: Optional[Tensor], k_top: int, k_att: int, k_trunc: int, step0: int,
    eps: float, backend: str, cell_type: str = "lstm", recent: int = 0, relevant: int = 0,
    active: Optional[Tensor] = None, relevance: Optional[Tensor] = None, count: int = 0, kept: int = 0,
) -> Tuple[(Tensor,) * 16]:
    if k_top > 0:
        n0 = memory.shape[1]
        extra = slots_written(x.shape[0], step0, k_att)
        buf = SlotBuffers.from_slots(memory, key_weight, extra, capacity=n0 + extra)
        values, keys = buf.values, buf.keys
        att = [t.contiguous() for t in (query_weight, query_bias, key_weight, score_weight)]
    else:
        n0, values, keys, att = 0, _empty(x), _empty(x), [_empty(x)] * 4
    c0 = c0.contiguous() if c0 is not None else _empty(x)
    w = [x.contiguous(), h0.contiguous(), c0, values, keys, n0, weight_ih.contiguous(), weight_hh.contiguous()]
    if backend == "cpu":
        bounded = k_top > 0 and recent > 0
        bound = ((recent, relevant, active.contiguous(), relevance.contiguous(), count, kept) if bounded
                 else (0, 0, _empty(x).long(), _empty(x), 0, 0))
        outs = _C.rnn_forward(_CELL_ID[cell_type], *w, bias_ih.contiguous(), bias_hh.contiguous(), *att, k_top, k_att,
                              k_trunc, step0, eps, *bound, True)
        new_active, new_relevance = outs[13], outs[14]
        if not bounded:
            new_active = _empty(x).long()
    else:
        outs = kernels(backend).lstm_forward(*w, (bias_ih + bias_hh).contiguous(), *att, k_top, k_att, k_trunc, step0,
                                             eps)
        new_active, new_relevance = _empty(x).long(), _empty(x)
    out, h_n, c_n, G, C, TC, HH, _out, Q, W, IDX, THR, SLOT = outs[:13]
    memory_out = values if k_top > 0 else x.new_empty((x.shape[1], 0, h0.shape[1]))
    # `out` is returned once: the backward reads it from the first output (an op's outputs may not alias).
    return out, h_n, c_n, memory_out, keys, G, C, TC, HH, Q, W, IDX, THR, SLOT, new_active, new_relevance


@_forward_op.register_fake
def _forward_fake(x, h0, c0, memory, weight_ih, weight_hh, bias_ih, bias_hh, query_weight, query_bias, key_weight,
                  score_weight, k_top, k_att, k_trunc, step0, eps, backend, cell_type="lstm", recent=0, relevant=0,
                  active=None, relevance=None, count=0, kept=0):
    T, B, _ = x.shape
    H = h0.shape[1]
    gru = cell_type == "gru"
    mem = k_top > 0
    bounded = mem and recent > 0
    D = query_weight.shape[0] if mem else 0
    S = memory.shape[1] + slots_written(T, step0, k_att) if mem else 0
    span = min(S, recent + relevant) if bounded else S
    k = min(k_top, span) if mem else 0
    Tm = T if mem else 0
    A = recent + relevant + 1
    long = dict(dtype=torch.int64)
    return (
        x.new_empty((T, B, 2 * H)), x.new_empty((B, H)), x.new_empty((0,) if gru else (B, H)), x.new_empty((B, S, H)),
        x.new_empty((B, S, D) if mem else (0,)), x.new_empty((T, B, (3 if gru else 4) * H)), x.new_empty((T, B, H)),
        x.new_empty((0 if gru else T, B, H)), x.new_empty((T, B, H) if mem else (0,)), x.new_empty((Tm, B, D)),
        x.new_empty((Tm, B, k)), x.new_empty((Tm, B, k), **long), x.new_empty((Tm, B), **long), x.new_empty((T,), **long),
        x.new_empty((B, A) if bounded else (0,), **long), x.new_empty((B, A) if bounded else (0,)),
    )


@torch.library.custom_op("sab::lstm_sequence_backward", mutates_args=())
def _backward_op(
    grad_out: Optional[Tensor], grad_h: Optional[Tensor], grad_c: Optional[Tensor], grad_memory: Optional[Tensor],
    inputs: List[Tensor], saved: List[Tensor], n0: int, k_top: int, k_att: int, k_trunc: int, step0: int,
    need_grad_x: bool, eps: float, backend: str, cell_type: str = "lstm",
) -> Tuple[(Tensor,) * 13]:
    """inputs: x, h0, c0, values, keys, w_ih, w_hh, b_ih (LSTM: b_ih + b_hh), W_h, b, W_m, w, b_hh."""
    x = inputs[0]
    grads = [g.contiguous() if g is not None else _empty(x) for g in (grad_out, grad_h, grad_c, grad_memory)]
    if backend == "cpu":
        return tuple(_C.rnn_backward(_CELL_ID[cell_type], *grads, inputs, saved, n0, k_top, k_att, k_trunc, step0,
                                     need_grad_x, eps))
    outs = kernels(backend).lstm_backward(*grads, inputs[:12], saved, n0, k_top, k_att, k_trunc, step0, need_grad_x, eps)
    return (*outs, _empty(x))


@_backward_op.register_fake
def _backward_fake(grad_out, grad_h, grad_c, grad_memory, inputs, saved, n0, k_top, k_att, k_trunc, step0, need_grad_x, eps,
                   backend, cell_type="lstm"):
    x, h0, c0, values, keys, w_ih, w_hh, bias, wq, bq, wm, w, b_hh = inputs
    T, B, I = x.shape
    H = h0.shape[1]
    mem = k_top > 0
    gru = cell_type == "gru"
    return (
        x.new_empty((T, B, I) if need_grad_x else (0,)), x.new_empty((B, H)), x.new_empty((0,) if gru else (B, H)),
        x.new_empty((B, n0, H) if mem else (0,)), x.new_empty(w_ih.shape), x.new_empty(w_hh.shape),
        x.new_empty(bias.shape), x.new_empty(wq.shape if mem else (0,)), x.new_empty(bq.shape if mem else (0,)),
        x.new_empty(wm.shape if mem else (0,)), x.new_empty(w.shape if mem else (0,)), x.new_empty((), dtype=torch.int64),
        x.new_empty(b_hh.shape if gru and backend == "cpu" else (0,)),
    )


def _setup_context(ctx, inputs, output):
    x, h0, c0, memory, w_ih, w_hh, b_ih, b_hh, wq, bq, wm, w, k_top, k_att, k_trunc, step0, eps, backend = inputs[:18]
    cell_type = inputs[18] if len(inputs) > 18 else "lstm"
    out, h_n, c_n, values, keys, G, C, TC, HH, Q, W, IDX, THR, SLOT = output[:14]
    ctx.mem = k_top > 0
    ctx.gru = cell_type == "gru"
    att = (wq, bq, wm, w) if ctx.mem else (x.new_empty(0),) * 4
    bias = b_ih if ctx.gru else (b_ih + b_hh).contiguous()
    c0 = c0 if c0 is not None else x.new_empty(0)
    ctx.save_for_backward(x, h0, c0, values, keys, w_ih, w_hh, bias, *att, b_hh, G, C, TC, HH, out, Q, W, IDX, THR, SLOT)
    ctx.config = (memory.shape[1] if ctx.mem else 0, k_top, k_att, k_trunc, step0, eps, backend, cell_type)


def _backward(ctx, g_out, g_h, g_c, g_mem, *_rest):
    n0, k_top, k_att, k_trunc, step0, eps, backend, cell_type = ctx.config
    tensors = list(ctx.saved_tensors)
    inputs, saved = tensors[:13], tensors[13:]
    need_x = ctx.needs_input_grad[0]
    gx, gh0, gc0, gmem, gwih, gwhh, gb, gwq, gbq, gwm, gw, _visited, gbhh = _backward_op(
        g_out, g_h, g_c, g_mem, [t.contiguous() for t in inputs], saved, n0, k_top, k_att, k_trunc, step0, need_x, eps,
        backend, cell_type,
    )
    att = (gwq, gbq, gwm, gw) if ctx.mem else (None,) * 4
    return (gx if need_x else None, gh0, None if ctx.gru else gc0, gmem if ctx.mem else None, gwih, gwhh, gb,
            gbhh if ctx.gru else gb, *att, *(None,) * 13)


_forward_op.register_autograd(_backward, setup_context=_setup_context)


def sequence(x, h0, c0, memory, w_ih, w_hh, b_ih, b_hh, wq, bq, wm, w, k_top: int, k_att: int, k_trunc: int, step0: int,
             eps: float, backend: str = "cpu", cell_type: str = "lstm", index=None):
    """(out, h_n, c_n, memory_out, index) through the custom op (the traced twin of `sab_lstm_fused.sequence`);
    c_n is None for a GRU, index (a new SlotIndex) None for an unbounded memory."""
    bound = ()
    if index is not None:
        bound = (index.recent, index.relevant, index.active, index.relevance, index.count, index.kept)
    outs = _forward_op(x, h0, c0 if cell_type == "lstm" else None, memory if k_top > 0 else None, w_ih, w_hh, b_ih, b_hh,
                       wq, bq, wm, w, k_top, k_att, k_trunc, step0, eps, backend, cell_type, *bound)
    new_index = None
    if index is not None:
        from .bounded_slots import SlotIndex

        count, kept = index_counts(index.count, index.kept, index.recent, index.relevant,
                                   slots_written(x.shape[0], step0, k_att))
        new_index = SlotIndex(index.recent, index.relevant, outs[14], outs[15], count, kept)
    return outs[0], outs[1], outs[2] if cell_type == "lstm" else None, outs[3], new_index
