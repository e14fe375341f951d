"""`SABLSTM` and `SABGRU`: Sparse Attentive Backtracking where `nn.LSTM` and `nn.GRU` are used: stacked layers,
padded or packed variable-length batches, and a bounded memory. Each layer is a single-layer module of
sab_layer.py (reachable as `module.layers`); this file only stacks them and reads the batch.

Variable lengths: row b runs its first lengths[b] steps exactly as it would alone. The batch runs in spans
between consecutive distinct lengths: rows whose length is reached leave it, and the rest continue from their
state (the chunked-continuation contract: a sequence run in chunks equals the sequence run whole), so no step
past a row's length is computed, no slot is written past it, and its outputs there are zero.
"""

from __future__ import annotations

from typing import List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from ..reference import EPS
from .sab_layer import SABCellLayer, SABGRULayer, SABLayer, SABLSTMLayer, check_count
from .state import Resolved, SABState, check_continuable, recorded_state, remember, resolve_hx

# The attributes of a one-layer module that are its layer's (the module's interface before num_layers).
_LAYER_ATTRIBUTES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "memory")


class SABRNN(nn.Module):
    """A stack of SAB layers (LAYER: SABLSTMLayer or SABGRULayer); see SABLSTM for the arguments."""

    LAYER = SABLayer

    def __init__(self, input_size: int, hidden_size: int, k_top: Optional[int] = 5, k_att: int = 1,
                 k_trunc: Optional[int] = 5, attn_dim: Optional[int] = None, batch_first: bool = False,
                 backend: str = "auto", path: str = "auto", eps: float = EPS, *, num_layers: int = 1,
                 dropout: float = 0.0, recent_slots: Optional[int] = None, relevant_slots: Optional[int] = None):
        super().__init__()
        check_count("num_layers", num_layers, 1)
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")
        self.input_size, self.hidden_size, self.num_layers, self.dropout = input_size, hidden_size, num_layers, float(dropout)
        self.k_top, self.k_att, self.k_trunc = k_top, k_att, (k_trunc or None)
        self.batch_first, self.backend = batch_first, backend
        self.recent_slots, self.relevant_slots = recent_slots, relevant_slots
        self.layers = nn.ModuleList(
            self.LAYER(input_size if l == 0 else 2 * hidden_size, hidden_size, k_top, k_att, k_trunc, attn_dim,
                       backend, path, eps, recent_slots, relevant_slots)
            for l in range(num_layers)
        )
        self._register_load_state_dict_pre_hook(_one_layer_keys, with_module=True)

    @property
    def output_size(self) -> int:
        return 2 * self.hidden_size

    @property
    def path(self) -> str:
        return self.layers[0].path

    @path.setter
    def path(self, value: str) -> None:
        for layer in self.layers:
            layer.path = value

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in _LAYER_ATTRIBUTES and self.num_layers == 1:
                return getattr(self.layers[0], name)
            raise

    def uses_fused_path(self, x: Tensor, trace=None) -> bool:
        """Whether forward(x) runs the fused sequence kernels in its first layer (raises if path="fused" and
        they cannot run)."""
        if self.batch_first and x.dim() == 3:
            x = x.transpose(0, 1)
        return self.layers[0].uses_fused_path(x, trace)

    def forward(self, x: Union[Tensor, PackedSequence], hx=None, lengths: Optional[Tensor] = None,
                trace: Optional[List[dict]] = None):
        packed = x if isinstance(x, PackedSequence) else None
        if packed is not None:
            if lengths is not None:
                raise ValueError("lengths must be None when x is a PackedSequence (it carries its lengths)")
            x, lengths = pad_packed_sequence(packed, batch_first=self.batch_first)
        if not isinstance(x, Tensor) or x.dim() != 3:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x must be 3-D ((T, B, I) or (B, T, I) with batch_first), got {shape}")
        if x.shape[2] != self.input_size:
            raise ValueError(f"x must have {self.input_size} features (input_size) in its last dimension, got {tuple(x.shape)}")
        if self.batch_first:
            x = x.transpose(0, 1)
        T, B, _ = x.shape
        lengths = _check_lengths(lengths, T, B)
        if lengths is not None and trace is not None:
            raise ValueError("trace is recorded for equal-length batches only (lengths=None)")
        starts = self._split_hx(x, hx)
        outputs, states = x, []
        for l, (layer, hx_l) in enumerate(zip(self.layers, starts)):
            if l > 0 and self.dropout > 0 and self.training:
                outputs = F.dropout(outputs, self.dropout, training=True)
            start = resolve_hx(layer, outputs, hx_l, self.hidden_size, layer.memory is not None, layer.HAS_C)
            if lengths is None:
                outputs, state = layer.run(outputs, start, trace)
                if self.num_layers == 1:
                    remember(layer, state)
            else:
                outputs, state = _run_ragged(layer, outputs, start, lengths)
            states.append(state)
        out = outputs.transpose(0, 1) if self.batch_first else outputs
        state = states[0] if self.num_layers == 1 else _stack_states(states, lengths)
        if self.num_layers > 1:
            remember(self, state)
        if packed is not None:
            out = _pack_like(out, lengths, packed, self.batch_first)
        return out, self._returned_state(state)

    def _returned_state(self, state: SABState):
        if self.layers[0].HAS_C:
            return state
        # A cell without c (GRU): h_n alone, as nn.GRU returns it, carrying the state without h itself
        # (h -> state -> h would be a reference cycle): a continuing call takes h from its hx, the rest from here.
        h = state[0]
        h.sab_state = SABState(h.detach(), None, state.memory, state.step, slots=state._slots, index=state.index,
                               layers=state.layers, lengths=state.lengths)
        return h

    def _split_hx(self, x: Tensor, hx) -> list:
        """Each layer's hx from the module's: None, an SABState (a layer's own with one layer, the stack's with
        several), or tensors (L, B, H) (with one layer also (B, H)), which continue the state this module
        returned with them when they are its (or detached copies of it)."""
        L, (T, B, _) = self.num_layers, x.shape
        if hx is None or L == 1:
            return [hx] * L
        check_continuable(hx)
        has_c = self.layers[0].HAS_C
        if has_c and (not isinstance(hx, (tuple, list)) or len(hx) != 2):
            raise TypeError(f"hx must be (h0, c0), each (num_layers, B, H), or an SABState, got {type(hx).__name__}")
        h, c = (hx[0], hx[1]) if has_c else ((hx[0], None) if isinstance(hx, SABState) else (hx, None))
        for name, t in (("h0", h), ("c0", c)) if has_c else (("h0", h),):
            if not isinstance(t, Tensor) or tuple(t.shape) != (L, B, self.hidden_size):
                shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
                raise ValueError(f"hx: {name} must have shape (num_layers, B, H) = ({L}, {B}, {self.hidden_size}), got {shape}")
        state = hx if isinstance(hx, SABState) else recorded_state(self, h)
        if state is not None:
            check_continuable(state)
        layers = state.layers if state is not None and state.layers is not None else None
        if layers is None:
            return [(h[l], c[l]) if has_c else h[l] for l in range(L)]
        return [SABState(h[l], c[l] if has_c else None, s.memory, s.step, slots=s._slots, index=s.index)
                for l, s in enumerate(layers)]


def _check_lengths(lengths, T: int, B: int) -> Optional[Tensor]:
    """lengths (B,) int64 in [1, T] as a CPU tensor, or None when absent or every row runs all T steps."""
    if lengths is None:
        return None
    if not isinstance(lengths, Tensor):
        raise TypeError(f"lengths must be a (B,) int64 tensor, got {type(lengths).__name__}")
    if lengths.dtype != torch.int64:
        raise TypeError(f"lengths must have dtype int64, got {lengths.dtype}")
    if tuple(lengths.shape) != (B,):
        raise ValueError(f"lengths must have shape (B,) = ({B},), got {tuple(lengths.shape)}")
    lengths = lengths.cpu()  # the spans are planned on the host
    if B and (int(lengths.min()) < 1 or int(lengths.max()) > T):
        raise ValueError(f"lengths must lie in [1, T] = [1, {T}], got min {int(lengths.min())} and max {int(lengths.max())}")
    return None if bool((lengths == T).all()) else lengths


def _select(state: SABState, rows: Tensor) -> Resolved:
    """The state of a subset of the rows (rows (b,) int64 into the batch of `state`) to continue from."""
    h, c = state[0][0], state[1]
    rows_d = rows.to(h.device)
    c = c[0].index_select(0, rows_d) if c is not None else None
    memory = state.memory.index_select(0, rows_d) if state.memory is not None else None
    index = state.index.select(rows_d) if state.index is not None else None
    return Resolved(h.index_select(0, rows_d), c, memory, None, state.step, index)


def _run_ragged(layer: SABLayer, x: Tensor, start: Resolved, lengths: Tensor) -> Tuple[Tensor, SABState]:
    """One layer over a padded batch x (T, B, I) whose row b has lengths[b] steps (see the module docstring)."""
    T, B, _ = x.shape
    H = layer.hidden_size
    pieces, alive, t = [], torch.arange(B), 0
    h_n = x.new_zeros((B, H))
    c_n = x.new_zeros((B, H)) if layer.HAS_C else None
    state = None
    for end in sorted(set(lengths.tolist())):
        rows = alive.to(x.device)
        out, state = layer.run(x[t:end].index_select(1, rows), start)
        pieces.append(out.new_zeros((end - t, B, out.shape[2])).index_copy(1, rows, out))
        done = lengths[alive] == end
        done_rows = alive[done].to(x.device)
        pos = torch.nonzero(done).flatten().to(x.device)
        h_n = h_n.index_copy(0, done_rows, state[0][0].index_select(0, pos))
        if c_n is not None:
            c_n = c_n.index_copy(0, done_rows, state[1][0].index_select(0, pos))
        keep = torch.nonzero(~done).flatten()
        alive, t = alive[keep], end
        if len(alive):
            start = _select(state, keep)
    if t < T:
        pieces.append(x.new_zeros((T - t, B, pieces[0].shape[2])))
    out = torch.cat(pieces, 0)
    return out, SABState(h_n.unsqueeze(0), c_n.unsqueeze(0) if c_n is not None else None, None, T, lengths=lengths)


def _stack_states(states: List[SABState], lengths: Optional[Tensor]) -> SABState:
    h = torch.cat([s[0] for s in states], 0)
    c = torch.cat([s[1] for s in states], 0) if states[0][1] is not None else None
    return SABState(h, c, None, states[0].step, layers=tuple(states), lengths=lengths)


def _pack_like(out: Tensor, lengths: Tensor, like: PackedSequence, batch_first: bool) -> PackedSequence:
    """out (padded, batch in the original order) packed with `like`'s batch sizes and sort order, as nn.LSTM
    returns it."""
    dim = 0 if batch_first else 1
    if like.sorted_indices is not None:
        out = out.index_select(dim, like.sorted_indices)
        lengths = lengths.index_select(0, like.sorted_indices.cpu())
    data = pack_padded_sequence(out, lengths, batch_first=batch_first, enforce_sorted=True).data
    return PackedSequence(data, like.batch_sizes, like.sorted_indices, like.unsorted_indices)


def _one_layer_keys(module, state_dict, prefix, *args) -> None:
    """Load the state dict of a one-layer module saved before `layers` existed (weight_ih, memory.* at the
    top) into layers.0."""
    for key in list(state_dict):
        if key.startswith(prefix) and key[len(prefix):].split(".")[0] in _LAYER_ATTRIBUTES:
            state_dict[prefix + "layers.0." + key[len(prefix):]] = state_dict.pop(key)


class SABLSTM(SABRNN):
    """LSTM with Sparse Attentive Backtracking, with `nn.LSTM`'s interface.

    Args:
        input_size: I.
        hidden_size: H.
        k_top: slots kept per step (0: no memory, plain LSTM; None: dense attention over all slots).
        k_att: append h_t to the memory every k_att steps.
        k_trunc: detach h, c every k_trunc steps (None or 0: never, full BPTT).
        attn_dim: D, width of the scoring MLP (default H).
        batch_first: input (B, T, I) and output (B, T, 2H) instead of (T, B, ...).
        backend: sparse-attention backend of the per-step path ("auto", "cpu", "triton", "reference").
        path: "auto" (a fused sequence when one can run: the C++ kernels for CPU float32/float64 tensors when
            the extension is built and the backend resolves to "cpu", the Triton kernels for CUDA float32/float64
            tensors; the per-step path otherwise, `uses_fused_path` says why), "fused" (require it; with
            backend="triton" also on CPU tensors under TRITON_INTERPRET=1), "step".
        eps: the sparsifier's epsilon (default 1e-7, the paper's; see `sab_kernels.sparse_attention`).
        num_layers: stacked layers; layer l + 1 reads layer l's output concat(h, s) (2H features).
        dropout: dropout on each layer's output but the last's, in training only (as nn.LSTM).
        recent_slots, relevant_slots: W and M of a bounded memory (both or neither; None: the paper's
            unbounded memory). Each step attends over a row's W most recently written slots and up to M older
            ones kept for their relevance (the attention they received while recent); a step then costs
            O(W + M) whatever T. M = 0 is a sliding window. See sab_kernels/kernels/bounded_slots.py.

    forward(x, hx=None, lengths=None, trace=None):
        x: (T, B, I) or (B, T, I) with batch_first, or a PackedSequence (the output is then packed too).
        hx: optional (h0, c0), each (num_layers, B, H) as in nn.LSTM (one layer: also (B, H)), or the SABState
            a previous call returned, to continue the same sequence (memory, truncation and slot-write phase
            carry over: a sequence run in chunks equals the sequence run whole).
        lengths: optional (B,) int64 in [1, T]: row b runs its first lengths[b] steps exactly as it would
            alone; its outputs past them are zero, h_n/c_n are its state after its last step, and it writes no
            slot past them. The state of a ragged call cannot be continued (ValueError).
        trace: optional list (per-step path, equal lengths); each step of each layer appends a dict(h_hat, h,
            summary, weights, indices, threshold, slot) for inspection (slot: the slot written, or None).
        Returns output (T, B, 2H) = concat(h_t, s_t) of the last layer (s_t = 0 without memory) and
        SABState (h_n, c_n), each (num_layers, B, H), with the memory attached.

    The layers are `module.layers` (SABLSTMLayer); with one layer, `module.weight_ih`, `.memory` etc. are its.
    Under autocast the fused path computes in the parameters' dtype; the per-step path runs the attention in
    the memory's dtype.
    """

    LAYER = SABLSTMLayer

    def extra_repr(self) -> str:
        return _extra_repr(self)


class SABGRU(SABRNN):
    """GRU with Sparse Attentive Backtracking, with `nn.GRU`'s interface: the cell of nn.GRUCell (weight_ih
    (3H, I), weight_hh (3H, H), bias_ih, bias_hh; per layer in `module.layers`, SABGRULayer), then the same
    attention as SABLSTM: h_hat = GRUCell(x_t, h_{t-1}), h_t = h_hat + s_t, output concat(h_t, s_t).

    Arguments as SABLSTM. forward(x, hx=None, lengths=None, trace=None) -> (output, h_n): hx is h0
    (num_layers, B, H) (one layer: also (B, H)) or h_n of a previous call, which continues that sequence,
    memory included (the state rides on h_n as `h_n.sab_state`; `h_n.detach()` carries it without gradient, a
    tensor the module did not return starts a new memory).
    """

    LAYER = SABGRULayer

    def extra_repr(self) -> str:
        return _extra_repr(self)


class SparseAttentiveRNN(SABRNN):
    """SAB around an RNN cell of your own (one layer, the per-step path): `cell` is called as torch's cells are,
    cell(x_t, h) -> h_hat (nn.RNNCell, nn.GRUCell, ...) or, for an nn.LSTMCell, cell(x_t, (h, c)) -> (h_hat, c);
    then s_t = attention of h_hat over the memory, h_t = h_hat + s_t, output concat(h_t, s_t). The other
    arguments, forward and the returned state are SABLSTM's (cells without c return h_n as SABGRU does).
    `SparseAttentiveRNN(nn.GRUCell(I, H))` computes what SABGRU(I, H) does with the same weights."""

    def __init__(self, cell: nn.Module, k_top: Optional[int] = 5, k_att: int = 1, k_trunc: Optional[int] = 5,
                 attn_dim: Optional[int] = None, batch_first: bool = False, backend: str = "auto", eps: float = EPS,
                 *, recent_slots: Optional[int] = None, relevant_slots: Optional[int] = None):
        nn.Module.__init__(self)
        layer = SABCellLayer(cell, k_top, k_att, k_trunc, attn_dim, backend, "step", eps, recent_slots, relevant_slots)
        self.input_size, self.hidden_size, self.num_layers, self.dropout = cell.input_size, cell.hidden_size, 1, 0.0
        self.k_top, self.k_att, self.k_trunc = k_top, k_att, (k_trunc or None)
        self.batch_first, self.backend = batch_first, backend
        self.recent_slots, self.relevant_slots = recent_slots, relevant_slots
        self.layers = nn.ModuleList([layer])

    def extra_repr(self) -> str:
        return _extra_repr(self)


def _extra_repr(m: SABRNN) -> str:
    extra = f", num_layers={m.num_layers}" if m.num_layers > 1 else ""
    extra += f", dropout={m.dropout}" if m.dropout else ""
    extra += f", batch_first=True" if m.batch_first else ""
    return f"{m.input_size}, {m.hidden_size}{extra}"
