"""`SABLSTM`: an LSTM with Sparse Attentive Backtracking (SPEC section 2), with an `nn.LSTM`-like interface.

One step t, input x_t:
  1. if (t+1) % k_trunc == 0: h, c = h.detach(), c.detach()        (truncated BPTT on the main chain)
  2. h_hat, c = LSTM cell(x_t, (h, c))
  3. s_t = sparse attention of h_hat over the memory;  h = h_hat + s_t
  4. if (t+1) % k_att == 0: append h to the memory (not detached: sparse replay through it)
  5. output_t = concat(h_t, s_t)
The baselines are limits of this module: k_top=0 -> truncated-BPTT LSTM (s_t = 0); k_trunc=None (or >= T)
-> no truncation (full BPTT); k_top=None -> dense softmax attention over every slot.
"""

from __future__ import annotations

import math
from typing import List, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from ..kernels import resolve_backend
from ..kernels import sab_lstm_fused
from ..kernels.input_projection import input_projection
from ..reference import EPS
from .memory import SparseAttentiveMemory
from .state import SABState, remember, resolve_hx

PATHS = ("auto", "fused", "step")


def _check_count(name: str, value, low: int, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int{' or None' if allow_none else ''}, got {type(value).__name__}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}{' or None' if allow_none else ''}, got {value}")


class SABLSTM(nn.Module):
    """Single-layer LSTM with a sparse attentive memory.

    Args:
        input_size: I.
        hidden_size: H.
        k_top: slots kept per step (0: no memory, plain LSTM; None: dense attention over all slots).
        k_att: append h_t to the memory every k_att steps.
        k_trunc: detach h, c every k_trunc steps (None or 0: never, full BPTT).
        attn_dim: D, width of the scoring MLP (default H).
        batch_first: input (B, T, I) and output (B, T, 2H) instead of (T, B, ...).
        backend: sparse-attention backend of the per-step path ("auto", "cpu", "triton", "reference").
        eps: the sparsifier's epsilon (default 1e-7, the paper's; see `sab_kernels.sparse_attention`).
        path: "auto" (a fused sequence when one can run: the C++ kernels for CPU float32/float64 tensors when
            the extension is built and the backend resolves to "cpu", the Triton kernels for CUDA float32/float64
            tensors; the per-step path otherwise, `uses_fused_path` says why), "fused" (require it; with
            backend="triton" also on CPU tensors under TRITON_INTERPRET=1), "step".

    forward(x, hx=None, trace=None):
        x: (T, B, I) or (B, T, I) with batch_first.
        hx: optional (h0, c0), each (1, B, H) as in nn.LSTM (or (B, H)), or the SABState a previous call
            returned, to continue the same sequence (memory, truncation and slot-write phase carry over: a
            sequence run in chunks equals the sequence run whole).
        trace: optional list (per-step path only); each step appends a dict(h_hat, h, summary, weights,
            indices, threshold, slot) for inspection (slot: index of the slot written at this step, or None).
        Returns output (T, B, 2H) = concat(h_t, s_t) per step (s_t = 0 without memory) and
        SABState (h_n, c_n), each (1, B, H), with the memory attached.

    Under autocast the fused path computes in the parameters' dtype; the per-step path runs the attention in
    the memory's dtype.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        k_top: Optional[int] = 5,
        k_att: int = 1,
        k_trunc: Optional[int] = 5,
        attn_dim: Optional[int] = None,
        batch_first: bool = False,
        backend: str = "auto",
        path: str = "auto",
        eps: float = EPS,
    ):
        super().__init__()
        _check_count("input_size", input_size, 1)
        _check_count("hidden_size", hidden_size, 1)
        _check_count("k_top", k_top, 0, allow_none=True)
        _check_count("k_att", k_att, 1)
        _check_count("k_trunc", k_trunc, 0, allow_none=True)
        _check_count("attn_dim", attn_dim, 1, allow_none=True)
        if path not in PATHS:
            raise ValueError(f"path must be one of {PATHS}, got {path!r}")
        self.input_size, self.hidden_size = input_size, hidden_size
        self.k_top, self.k_att, self.k_trunc = k_top, k_att, (k_trunc or None)
        self.batch_first, self.backend, self.path = batch_first, backend, path
        H = hidden_size
        # nn.LSTMCell layout: gates (i, f, g, o), weight_ih (4H, I), weight_hh (4H, H).
        self.weight_ih = nn.Parameter(torch.empty(4 * H, input_size))
        self.weight_hh = nn.Parameter(torch.empty(4 * H, H))
        self.bias_ih = nn.Parameter(torch.empty(4 * H))
        self.bias_hh = nn.Parameter(torch.empty(4 * H))
        bound = 1.0 / math.sqrt(H)
        for p in (self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh):
            nn.init.uniform_(p, -bound, bound)
        self.memory: Optional[SparseAttentiveMemory] = None
        if k_top != 0:
            # Dense: k_top larger than any memory ever holds (the op keeps min(k_top, n) slots).
            self.memory = SparseAttentiveMemory(H, attn_dim or H, k_top if k_top is not None else 2**31 - 1, backend, eps)

    @property
    def output_size(self) -> int:
        return 2 * self.hidden_size

    def uses_fused_path(self, x: Tensor, trace=None) -> bool:
        """Whether forward(x) runs the fused sequence kernels (raises if path="fused" and it cannot)."""
        if self.path == "step":
            return False
        backend = resolve_backend(self.backend, x.device)
        reason = sab_lstm_fused.unsupported_reason(x, backend, self.k_top, self.weight_ih.dtype)
        if reason is None and backend == "triton" and x.device.type != "cuda" and self.path == "auto":
            reason = "the Triton fused path runs on CPU tensors (the interpreter) only when asked for: path='fused'"
        if reason is None and trace is not None:
            reason = "trace is recorded by the per-step path only"
        if reason is not None and self.path == "fused":
            raise RuntimeError(f"SABLSTM(path='fused'): {reason}")
        return reason is None

    def forward(
        self, x: Tensor, hx: Union[None, SABState, Tuple[Tensor, Tensor]] = None, trace: Optional[List[dict]] = None
    ) -> Tuple[Tensor, SABState]:
        if not isinstance(x, Tensor) or x.dim() != 3:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x must be 3-D ((T, B, I) or (B, T, I) with batch_first), got {shape}")
        if x.shape[2] != self.input_size:
            raise ValueError(f"x must have {self.input_size} features (input_size) in its last dimension, got {tuple(x.shape)}")
        if self.batch_first:
            x = x.transpose(0, 1)
        T, B, _ = x.shape
        start = resolve_hx(self, x, hx, self.hidden_size, self.memory is not None)
        h, c, memory, slots, step0 = start
        if T == 0 or B == 0:
            out = x.new_zeros((T, B, self.output_size))
            if self.batch_first:
                out = out.transpose(0, 1)
            return out, SABState(h.unsqueeze(0), c.unsqueeze(0), memory, step0 + T, slots=slots)
        if self.uses_fused_path(x, trace):
            out, h, c, memory, slots = self._forward_fused(x, h, c, memory, slots, step0)
        else:
            out, h, c, memory, slots = self._forward_steps(x, h, c, memory, slots, step0, trace)
        if self.batch_first:
            out = out.transpose(0, 1)
        state = SABState(h.unsqueeze(0), c.unsqueeze(0), memory, step0 + T, slots=slots)
        remember(self, state)
        return out, state

    def _forward_fused(self, x, h, c, memory, slots, step0):
        if x.dtype in (torch.bfloat16, torch.float16):  # (Triton) half inputs: float32 state and accumulation
            x = x.to(self.weight_ih.dtype)
        mem = self.memory
        attention = None
        if mem is not None:
            attention = (mem.query_proj.weight, mem.query_proj.bias, mem.key_proj.weight, mem.score_weight)
            if memory.dtype != x.dtype:  # under autocast a state may come from the per-step path's dtypes
                memory, slots = memory.to(x.dtype), None
        cell = (self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
        out, h, c, values, slots = sab_lstm_fused.sequence(
            x, h.to(x.dtype), c.to(x.dtype), memory, slots, cell, attention,
            mem.k_top if mem is not None else 0, self.k_att, self.k_trunc or 0, step0,
            eps=mem.eps if mem is not None else EPS, backend=resolve_backend(self.backend, x.device),
        )
        return out, h, c, (values if mem is not None else None), slots

    def _forward_steps(self, x, h, c, memory, slots, step0, trace):
        T, B, _ = x.shape
        H = self.hidden_size
        # The input half of every gate at once: one (T*B, I) x (I, 4H) matmul instead of T small ones.
        gates_x = input_projection(x.reshape(T * B, -1), self.weight_ih, self.bias_ih + self.bias_hh).view(T, B, 4 * H)
        gates_x = gates_x.unbind(0)  # one backward node; indexing gates_x[t] would zero-fill (T, B, 4H) per step
        w_hh_t = self.weight_hh.t()
        mem = self.memory
        writes = sab_lstm_fused.slots_written(T, step0, self.k_att)
        state = mem.start(memory, memory.shape[1] + writes, buffers=slots) if mem is not None else None
        zeros = x.new_zeros((B, H))
        hs: List[Tensor] = []
        ss: List[Tensor] = []
        for t in range(T):
            tg = step0 + t
            if self.k_trunc is not None and (tg + 1) % self.k_trunc == 0:
                h, c = h.detach(), c.detach()
            gates = torch.addmm(gates_x[t], h, w_hh_t)
            i, f, g, o = gates.chunk(4, 1)
            i, f, g, o = i.sigmoid(), f.sigmoid(), g.tanh(), o.sigmoid()
            c = torch.addcmul(f * c, i, g)
            h_hat = o * c.tanh()
            if mem is not None:
                att = mem.attend(state, h_hat)
                s = att.summary
                h = h_hat + s
                slot = None
                if (tg + 1) % self.k_att == 0:
                    slot = state.n
                    mem.append(state, h)
                if trace is not None:
                    trace.append(dict(h_hat=h_hat, h=h, summary=s, weights=att.weights, indices=att.indices,
                                      threshold=att.threshold, slot=slot))
            else:
                h, s = h_hat, zeros
                if trace is not None:
                    trace.append(dict(h_hat=h_hat, h=h, summary=s, weights=None, indices=None, threshold=None, slot=None))
            hs.append(h)
            ss.append(s)
        out = torch.cat([torch.stack(hs), torch.stack(ss)], dim=2)
        if mem is None:
            return out, h, c, None, None
        return out, h, c, mem.export(state), state.buffers

    def extra_repr(self) -> str:
        return (f"{self.input_size}, {self.hidden_size}, k_top={self.k_top}, k_att={self.k_att}, "
                f"k_trunc={self.k_trunc}, batch_first={self.batch_first}, path={self.path!r}")
