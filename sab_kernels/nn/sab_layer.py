"""One recurrent layer with Sparse Attentive Backtracking (SPEC section 2), for either cell: `SABLSTMLayer`
(nn.LSTMCell's layout) and `SABGRULayer` (nn.GRUCell's). `SABLSTM` and `SABGRU` (sab_rnn.py) stack them.

One step t, input x_t:
  1. if (t+1) % k_trunc == 0: cut the main chain (h, and c for the LSTM, detached)    truncated BPTT
  2. h_hat = cell(x_t, previous state)
  3. s_t = sparse attention of h_hat over the memory;  h = h_hat + s_t
  4. if (t+1) % k_att == 0: append h to the memory (not detached: sparse replay through it)
  5. output_t = concat(h_t, s_t)
With a bounded memory (recent_slots=W, relevant_slots=M) step 3 attends over each row's W most recent slots and
M kept ones (relevancy screening, kernels/bounded_slots.py), so a step costs O(W + M) instead of O(t).

A layer runs a sequence on one of two paths that the tests hold equal: the fused sequence kernels
(kernels/sab_lstm_fused.py: C++ on CPU, Triton on CUDA), or the per-step path below (autograd over the cell
and `SparseAttentiveMemory`), which runs everywhere and records a trace.
"""

from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch
from torch import Tensor, nn

from ..kernels import resolve_backend
from ..kernels import sab_lstm_fused
from ..kernels.bounded_slots import SlotIndex, check_bounds
from ..kernels.input_projection import input_projection
from ..reference import EPS
from .memory import SparseAttentiveMemory
from .state import Resolved, SABState

PATHS = ("auto", "fused", "step")


def check_count(name: str, value, low: int, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int{' or None' if allow_none else ''}, got {type(value).__name__}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}{' or None' if allow_none else ''}, got {value}")


class SABLayer(nn.Module):
    """One SAB layer; see SABLSTM (sab_rnn.py) for the arguments. Subclasses fix the cell: CELL, GATES (gate
    blocks of weight_ih/weight_hh) and `_cell_step`."""

    CELL = ""
    GATES = 0
    HAS_C = True

    def __init__(self, input_size: int, hidden_size: int, k_top: Optional[int] = 5, k_att: int = 1,
                 k_trunc: Optional[int] = 5, attn_dim: Optional[int] = None, backend: str = "auto",
                 path: str = "auto", eps: float = EPS, recent_slots: Optional[int] = None,
                 relevant_slots: Optional[int] = None):
        super().__init__()
        check_count("input_size", input_size, 1)
        check_count("hidden_size", hidden_size, 1)
        check_count("k_top", k_top, 0, allow_none=True)
        check_count("k_att", k_att, 1)
        check_count("k_trunc", k_trunc, 0, allow_none=True)
        check_count("attn_dim", attn_dim, 1, allow_none=True)
        if path not in PATHS:
            raise ValueError(f"path must be one of {PATHS}, got {path!r}")
        self.bounds = check_bounds(recent_slots, relevant_slots)
        self.recent_slots, self.relevant_slots = recent_slots, relevant_slots
        self.input_size, self.hidden_size = input_size, hidden_size
        self.k_top, self.k_att, self.k_trunc = k_top, k_att, (k_trunc or None)
        self.backend, self.path = backend, path
        self._make_cell_parameters()
        H = hidden_size
        self.memory: Optional[SparseAttentiveMemory] = None
        if k_top != 0:
            # Dense: k_top larger than any memory ever holds (the op keeps min(k_top, n) slots).
            self.memory = SparseAttentiveMemory(H, attn_dim or H, k_top if k_top is not None else 2**31 - 1, backend, eps)

    def _make_cell_parameters(self) -> None:
        """weight_ih (G H, I), weight_hh (G H, H), bias_ih, bias_hh (G H,), uniform in +-1/sqrt(H) as nn.LSTM."""
        H, G = self.hidden_size, self.GATES
        self.weight_ih = nn.Parameter(torch.empty(G * H, self.input_size))
        self.weight_hh = nn.Parameter(torch.empty(G * H, H))
        self.bias_ih = nn.Parameter(torch.empty(G * H))
        self.bias_hh = nn.Parameter(torch.empty(G * H))
        bound = 1.0 / math.sqrt(H)
        for p in (self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh):
            nn.init.uniform_(p, -bound, bound)

    @property
    def output_size(self) -> int:
        return 2 * self.hidden_size

    def unsupported_reason(self, x: Tensor, trace=None) -> Optional[str]:
        """Why forward(x) cannot run the fused sequence kernels, or None when it can."""
        if self.path == "step":
            return "path='step'"
        backend = resolve_backend(self.backend, x.device)
        reason = sab_lstm_fused.unsupported_reason(x, backend, self.k_top, self.weight_ih.dtype, cell_type=self.CELL,
                                                   bounded=self.bounds is not None)
        if reason is None and backend == "triton" and x.device.type != "cuda" and self.path == "auto":
            reason = "the Triton fused path runs on CPU tensors (the interpreter) only when asked for: path='fused'"
        if reason is None and trace is not None:
            reason = "trace is recorded by the per-step path only"
        return reason

    def uses_fused_path(self, x: Tensor, trace=None) -> bool:
        """Whether forward(x) runs the fused sequence kernels (raises if path="fused" and it cannot)."""
        reason = self.unsupported_reason(x, trace)
        if reason is not None and self.path == "fused":
            raise RuntimeError(f"{type(self).__name__}(path='fused'): {reason}")
        return reason is None

    def new_index(self, batch: int, n0: int, like: Tensor) -> Optional[SlotIndex]:
        """The SlotIndex of a bounded memory over n0 slots written in order, never attended (None: unbounded)."""
        if self.bounds is None or self.memory is None:
            return None
        return SlotIndex.new(batch, n0, *self.bounds, like.device, like.dtype)

    def run(self, x: Tensor, start: Resolved, trace: Optional[List[dict]] = None) -> Tuple[Tensor, SABState]:
        """x (T, B, I) from `start` (resolved by the caller): output (T, B, 2H) and the layer's state, h_n
        (and c_n) (1, B, H)."""
        T, B, _ = x.shape
        h, c, memory, slots, step0, index = start
        if memory is not None and index is None:
            index = self.new_index(B, memory.shape[1], memory)
        if T == 0 or B == 0:
            out = x.new_zeros((T, B, self.output_size))
        elif self.uses_fused_path(x, trace):
            out, h, c, memory, slots, index = self._forward_fused(x, h, c, memory, slots, step0, index)
        else:
            out, h, c, memory, slots, index = self._forward_steps(x, h, c, memory, slots, step0, index, trace)
        return out, SABState(h.unsqueeze(0), c.unsqueeze(0) if c is not None else None, memory, step0 + T,
                             slots=slots, index=index)

    def _forward_fused(self, x, h, c, memory, slots, step0, index):
        if x.dtype in (torch.bfloat16, torch.float16):  # (Triton) half inputs: float32 state and accumulation
            x = x.to(self.weight_ih.dtype)
        mem = self.memory
        attention = None
        if mem is not None:
            attention = (mem.query_proj.weight, mem.query_proj.bias, mem.key_proj.weight, mem.score_weight)
            if memory.dtype != x.dtype:  # under autocast a state may come from the per-step path's dtypes
                memory, slots = memory.to(x.dtype), None
                if index is not None:
                    index = SlotIndex(index.recent, index.relevant, index.active, index.relevance.to(x.dtype),
                                      index.count, index.kept)
        cell = (self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
        r = sab_lstm_fused.sequence(
            x, h.to(x.dtype), c.to(x.dtype) if c is not None else None, memory, slots, cell, attention,
            mem.k_top if mem is not None else 0, self.k_att, self.k_trunc or 0, step0,
            eps=mem.eps if mem is not None else EPS, backend=resolve_backend(self.backend, x.device),
            cell_type=self.CELL, index=index,
        )
        return r.out, r.h_n, r.c_n, (r.memory if mem is not None else None), r.slots, r.index

    def _cell_step(self, gates_x: Tensor, h: Tensor, c: Optional[Tensor]) -> Tuple[Tensor, Optional[Tensor]]:
        """(h_hat, c) of one step from the input half of the gates (B, G H) and the previous state."""
        raise NotImplementedError

    def _input_bias(self) -> Tensor:
        """The bias added to the input half of the gates (computed for all steps at once)."""
        raise NotImplementedError

    def _step_inputs(self, x: Tensor) -> Tuple[Tensor, ...]:
        """What `_cell_step` takes at each step: the input half of every gate, for all steps at once (one
        (T B, I) x (I, G H) matmul instead of T small ones)."""
        T, B, _ = x.shape
        gates_x = input_projection(x.reshape(T * B, -1), self.weight_ih, self._input_bias()).view(T, B, -1)
        return gates_x.unbind(0)  # one backward node; indexing gates_x[t] would zero-fill (T, B, G H) per step

    def _forward_steps(self, x, h, c, memory, slots, step0, index, trace):
        T, B, _ = x.shape
        H = self.hidden_size
        gates_x = self._step_inputs(x)
        mem = self.memory
        writes = sab_lstm_fused.slots_written(T, step0, self.k_att)
        state = mem.start(memory, memory.shape[1] + writes, buffers=slots, index=index) if mem is not None else None
        zeros = x.new_zeros((B, H))
        hs: List[Tensor] = []
        ss: List[Tensor] = []
        for t in range(T):
            tg = step0 + t
            if self.k_trunc is not None and (tg + 1) % self.k_trunc == 0:
                h, c = h.detach(), (c.detach() if c is not None else None)
            h_hat, c = self._cell_step(gates_x[t], h, c)
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
            return out, h, c, None, None, None
        return out, h, c, mem.export(state), state.buffers, state.index

    def extra_repr(self) -> str:
        bounded = f", recent_slots={self.recent_slots}, relevant_slots={self.relevant_slots}" if self.bounds else ""
        return (f"{self.input_size}, {self.hidden_size}, k_top={self.k_top}, k_att={self.k_att}, "
                f"k_trunc={self.k_trunc}{bounded}, path={self.path!r}")


class SABLSTMLayer(SABLayer):
    """One SAB-LSTM layer. nn.LSTMCell layout: gates (i, f, g, o), weight_ih (4H, I), weight_hh (4H, H),
    bias_ih and bias_hh (4H,)."""

    CELL = "lstm"
    GATES = 4
    HAS_C = True

    def _input_bias(self) -> Tensor:
        return self.bias_ih + self.bias_hh

    def _cell_step(self, gates_x, h, c):
        gates = torch.addmm(gates_x, h, self.weight_hh.t())
        i, f, g, o = gates.chunk(4, 1)
        i, f, g, o = i.sigmoid(), f.sigmoid(), g.tanh(), o.sigmoid()
        c = torch.addcmul(f * c, i, g)
        return o * c.tanh(), c


class SABGRULayer(SABLayer):
    """One SAB-GRU layer. nn.GRUCell layout: gates (r, z, n), weight_ih (3H, I), weight_hh (3H, H), bias_ih
    and bias_hh (3H,): r, z = sigmoid(x W_i. + b_i. + h W_h. + b_h.), n = tanh(x W_in + b_in + r (h W_hn + b_hn)),
    h_hat = (1 - z) n + z h."""

    CELL = "gru"
    GATES = 3
    HAS_C = False

    def _input_bias(self) -> Tensor:
        return self.bias_ih

    def _cell_step(self, gates_x, h, c):
        gates_h = torch.addmm(self.bias_hh, h, self.weight_hh.t())
        xr, xz, xn = gates_x.chunk(3, 1)
        hr, hz, hn = gates_h.chunk(3, 1)
        r, z = (xr + hr).sigmoid(), (xz + hz).sigmoid()
        n = torch.addcmul(xn, r, hn).tanh()
        return torch.addcmul(n, z, h - n), None


class SABCellLayer(SABLayer):
    """SAB around a cell of your own, on the per-step path: `cell` is called as torch's RNN cells are,
    cell(x_t, h) -> h_hat (nn.RNNCell, nn.GRUCell, anything with that contract) or, when `cell` is an
    nn.LSTMCell, cell(x_t, (h, c)) -> (h_hat, c). It needs `input_size` and `hidden_size` attributes. The rest
    of the step (attention, h = h_hat + s, slot writes, truncation, bounded memory) is SABLayer's."""

    CELL = "custom"

    def __init__(self, cell: nn.Module, k_top: Optional[int] = 5, k_att: int = 1, k_trunc: Optional[int] = 5,
                 attn_dim: Optional[int] = None, backend: str = "auto", path: str = "auto", eps: float = EPS,
                 recent_slots: Optional[int] = None, relevant_slots: Optional[int] = None):
        if not isinstance(cell, nn.Module):
            raise TypeError(f"cell must be an nn.Module (an RNN cell), got {type(cell).__name__}")
        for name in ("input_size", "hidden_size"):
            if not isinstance(getattr(cell, name, None), int):
                raise TypeError(f"cell must have an int attribute {name} (as torch's RNN cells do), "
                                f"{type(cell).__name__} has {getattr(cell, name, None)!r}")
        if path == "fused":
            raise ValueError("path='fused' runs the LSTM and GRU cells only; a cell of your own runs on path='step'")
        self.HAS_C = isinstance(cell, nn.LSTMCell)
        object.__setattr__(self, "_pending_cell", cell)  # a submodule once nn.Module is set up (below)
        super().__init__(cell.input_size, cell.hidden_size, k_top, k_att, k_trunc, attn_dim, backend, path, eps,
                         recent_slots, relevant_slots)

    def _make_cell_parameters(self) -> None:
        self.cell = self.__dict__.pop("_pending_cell")

    def unsupported_reason(self, x: Tensor, trace=None) -> Optional[str]:
        return f"a cell of your own ({type(self.cell).__name__}) runs on the per-step path"

    def _step_inputs(self, x: Tensor) -> Tuple[Tensor, ...]:
        return x.unbind(0)

    def _cell_step(self, x_t, h, c):
        if self.HAS_C:
            return self.cell(x_t, (h, c))
        return self.cell(x_t, h), None
