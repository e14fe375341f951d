"""`SABState`: where an SAB-LSTM sequence stands after a call, and how a continuing call reads it back.

A state is (h_n, c_n), each (1, B, H) as `nn.LSTM` returns them, plus the memory and the step count. The
memory's slots and keys live in `SlotBuffers` (sab_kernels/kernels/slot_buffers.py) that the state shares with
the calls before and after it: a continuing call appends in place, and a branch, a thread or a deepcopy that
continues the same state gets buffers of its own, so states behave as values.

`resolve_hx` is the one place both paths read `hx` through, so a state that does not fit gets the same
error whichever path runs.
"""

from __future__ import annotations

import weakref
from typing import NamedTuple, Optional

import torch
from torch import Tensor

from ..kernels.bounded_slots import SlotIndex
from ..kernels.slot_buffers import SlotBuffers


class SABState(tuple):
    """(h_n, c_n), each (num_layers, B, H), carrying the rest of the sequence's state:

    memory: (B, n, H) the slots written so far (graph-connected: gradient from a later chunk reaches them
        through sparse replay), or None without memory (k_top = 0) or with several layers;
    step: the number of steps run so far (the phase of truncation and slot writes);
    index: a bounded memory's SlotIndex (which slots each row attends over), else None;
    layers: with num_layers > 1, each layer's own state (h, c (1, B, H), memory, index), else None;
    lengths: the (B,) lengths of a call over a ragged batch, else None. Such a state ends rows at different
        steps (row b's memory holds the slots of its own steps), so it cannot be continued as a whole.
    A GRU state has c_n = None (SABGRU returns h_n alone, the state riding on it as `h_n.sab_state`).

    Unpacks like nn.LSTM's `(h, c)`; pass it back as `hx` to continue the sequence, or `state.detach()` to
    carry it across batches without gradient (stateful training). The slots' keys are cached with the state,
    so continuing never recomputes them (unless the key weights changed since, e.g. after an optimizer step).
    Saved with `torch.save`, a state loads with `torch.load(..., weights_only=True)`.
    """

    def __new__(cls, h: Tensor, c: Optional[Tensor], memory: Optional[Tensor] = None, step: int = 0, *,
                slots: Optional[SlotBuffers] = None, index: Optional[SlotIndex] = None,
                layers: Optional[tuple] = None, lengths: Optional[Tensor] = None):
        self = super().__new__(cls, (h, c))
        self.memory, self.step, self._slots = memory, int(step), slots
        self.index, self.layers, self.lengths = index, layers, lengths
        return self

    def __reduce__(self):
        # The memory alone, compact (it may alias buffers with spare rows): keys are rebuilt on continuation.
        memory = self.memory
        if memory is not None and memory.untyped_storage().nbytes() > memory.numel() * memory.element_size():
            memory = memory.detach().clone()
        return (_rebuild_state, (self[0], self[1], memory, self.step, self.index, self.layers, self.lengths))

    @property
    def h(self) -> Tensor:
        return self[0]

    @property
    def c(self) -> Tensor:
        return self[1]

    def detach(self) -> "SABState":
        """The same state cut from the graph (the memory's buffers are shared, not copied)."""
        mem = self.memory.detach() if self.memory is not None else None
        layers = tuple(s.detach() for s in self.layers) if self.layers is not None else None
        state = SABState(self[0].detach(), self[1].detach() if self[1] is not None else None, mem, self.step,
                         slots=self._slots, index=self.index, layers=layers, lengths=self.lengths)
        _remember_like(self, state)
        return state

    def __repr__(self) -> str:
        n = None if self.memory is None else self.memory.shape[1]
        c = None if self[1] is None else tuple(self[1].shape)
        extra = "" if self.layers is None else f", layers={len(self.layers)}"
        extra += "" if self.lengths is None else ", ragged"
        return f"SABState(h={tuple(self[0].shape)}, c={c}, slots={n}, step={self.step}{extra})"


def _rebuild_state(h, c, memory, step, index=None, layers=None, lengths=None) -> SABState:
    return SABState(h, c, memory, step, index=index, layers=layers, lengths=lengths)


torch.serialization.add_safe_globals([SABState, _rebuild_state])


class _Recorded(NamedTuple):
    """A returned state, held without keeping its graph alive: the module, h_n and the graph-connected memory
    weakly; the memory's rows (an alias of the buffers, no graph) strongly, so a detached h can continue."""

    owner: "weakref.ref"
    h: "weakref.ref"
    data_ptr: int
    numel: int
    memory: "weakref.ref"
    rows: Tensor
    step: int
    slots: Optional[SlotBuffers]
    index: Optional[SlotIndex]
    layers: Optional[tuple]  # detached per-layer states (several layers)
    lengths: Optional[Tensor]


# The states each module returned, by the storage of their h_n, so that a plain (h, c) that is really a
# state's (PyTorch's `tuple(v.detach() for v in state)` idiom keeps the storage) continues that state instead of
# silently restarting the memory. Weak keys: an entry lives as long as some tensor holds that h_n's storage.
_RECORDED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def remember(owner, state: SABState) -> None:
    """Record a state `owner` (the module) returned."""
    if not torch.compiler.is_compiling() and (state.memory is not None or state.layers is not None):
        h = state[0]
        memory = state.memory
        layers = tuple(s.detach() for s in state.layers) if state.layers is not None else None
        _RECORDED[h.untyped_storage()] = _Recorded(
            weakref.ref(owner), weakref.ref(h), h.data_ptr(), h.numel(),
            weakref.ref(memory) if memory is not None else (lambda: None),
            memory.detach() if memory is not None else None, state.step, state._slots, state.index, layers,
            state.lengths)


def _remember_like(old: SABState, new: SABState) -> None:
    entry = _RECORDED.get(old[0].untyped_storage()) if not torch.compiler.is_compiling() else None
    if entry is not None and entry.h() is old[0]:
        memory = weakref.ref(new.memory) if new.memory is not None else (lambda: None)
        _RECORDED[new[0].untyped_storage()] = entry._replace(h=weakref.ref(new[0]), memory=memory)


def _recorded_state(owner, h: Tensor) -> Optional[SABState]:
    """The state `owner` returned whose h_n is `h` or shares its storage (a detached or viewed copy), else None.
    The memory stays graph-connected only when h is that very tensor."""
    if torch.compiler.is_compiling():
        return None
    entry = _RECORDED.get(h.untyped_storage())
    if entry is None or entry.owner() is not owner or entry.data_ptr != h.data_ptr() or entry.numel != h.numel():
        return None
    memory = entry.memory() if entry.h() is h else None
    return SABState(h, h, memory if memory is not None else entry.rows, entry.step, slots=entry.slots,
                    index=entry.index, layers=entry.layers, lengths=entry.lengths)


def recorded_state(owner, h: Tensor) -> Optional[SABState]:
    """The state `owner` returned whose h_n is h, carried on h (SABGRU's `h_n.sab_state`) or found by h's
    storage (a detached copy of it), else None. Its h and c are not to be used: the caller's are."""
    carried = getattr(h, "sab_state", None)
    if isinstance(carried, SABState):
        return carried
    return _recorded_state(owner, h)


def check_continuable(hx) -> None:
    if isinstance(hx, SABState) and hx.lengths is not None:
        raise ValueError(
            "hx is the state of a call with ragged lengths: its rows ended at different steps, so it cannot "
            "continue as one sequence. Pass the lengths of the whole sequence to one call, or start afresh from "
            "its h (and c) by value: (h.clone(), c.clone())")


class Resolved(NamedTuple):
    h: Tensor  # (B, H)
    c: Optional[Tensor]  # (B, H), None for a GRU
    memory: Optional[Tensor]  # (B, n, H), or None without memory (k_top = 0)
    slots: Optional[SlotBuffers]  # the buffers holding memory, or None (new ones are made from memory)
    step: int
    index: Optional[SlotIndex] = None  # a bounded memory's slot index (None: make one for the n slots)


def _shape(t) -> str:
    return str(tuple(t.shape)) if isinstance(t, Tensor) else type(t).__name__


def resolve_hx(owner, x: Tensor, hx, hidden_size: int, has_memory: bool, has_c: bool = True) -> Resolved:
    """Read one layer's `hx` for a call on x (T, B, I), checking that it fits: None; for an LSTM (h0, c0) or an
    SABState; for a GRU h0 or an SABState (c None).

    Errors name `hx` and what was expected: shape (1, B, H) or (B, H) for h and c; a floating dtype equal to
    x's (outside autocast) and x's device for every tensor; memory (B, n >= 1, H) of h's dtype; step an int >= 0.
    """
    T, B, _ = x.shape
    H = hidden_size
    if hx is None:
        h = x.new_zeros((B, H))
        return Resolved(h, x.new_zeros((B, H)) if has_c else None, h.unsqueeze(1) if has_memory else None, None, 0)
    check_continuable(hx)
    if has_c:
        if not isinstance(hx, (tuple, list)) or len(hx) != 2:
            raise TypeError(f"hx must be (h0, c0) or an SABState, got {type(hx).__name__}"
                            + (f" of length {len(hx)}" if isinstance(hx, (tuple, list)) else ""))
        h, c = hx
    elif isinstance(hx, SABState):
        h, c = hx[0], None
    elif isinstance(hx, Tensor):
        h, c = hx, None
    else:
        raise TypeError(f"hx must be a tensor h0 or the state a previous call returned, got {type(hx).__name__}")
    if not isinstance(hx, SABState) and isinstance(h, Tensor) and has_memory:
        # h (and c) taken from a state this module returned (e.g. `tuple(v.detach() for v in state)`): continue
        # that state, memory and step included, rather than silently restart the memory.
        recorded = recorded_state(owner, h)
        if recorded is not None and (c is None or isinstance(c, Tensor)):
            check_continuable(recorded)
            hx = recorded
    autocast = torch.is_autocast_enabled(x.device.type)
    for name, t in (("h0", h), ("c0", c)) if has_c else (("h0", h),):
        if not isinstance(t, Tensor) or t.shape not in ((1, B, H), (B, H)):
            raise ValueError(f"hx: {name} must have shape (1, B, H) = (1, {B}, {H}) or (B, H), got {_shape(t)}")
        if not t.is_floating_point() or (not autocast and t.dtype != x.dtype):
            raise TypeError(f"hx: {name} must have x's dtype {x.dtype}, got {t.dtype}")
        if t.device != x.device:
            raise ValueError(f"hx: {name} must be on x's device {x.device}, got {t.device}")
    if has_c and h.dtype != c.dtype:
        raise TypeError(f"hx: h0 and c0 must have one dtype, got {h.dtype} and {c.dtype}")
    h, c = h.reshape(B, H), (c.reshape(B, H) if has_c else None)
    memory = getattr(hx, "memory", None)
    step = getattr(hx, "step", 0)
    slots = getattr(hx, "_slots", None)
    index = getattr(hx, "index", None)
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"hx.step must be an int >= 0 (the steps run so far), got {step!r}")
    if not has_memory:
        return Resolved(h, c, None, None, step)
    if memory is None:
        return Resolved(h, c, h.unsqueeze(1), None, step)  # a new memory: one slot holding h0
    if not isinstance(memory, Tensor) or memory.dim() != 3 or memory.shape[0] != B or memory.shape[2] != H \
            or memory.shape[1] < 1:
        raise ValueError(f"hx.memory must have shape (B, n, H) = ({B}, n >= 1, {H}), got {_shape(memory)}")
    if memory.dtype != h.dtype:
        raise TypeError(f"hx.memory must have h0's dtype {h.dtype}, got {memory.dtype}")
    if memory.device != x.device:
        raise ValueError(f"hx.memory must be on x's device {x.device}, got {memory.device}")
    if slots is not None and (slots.values.dtype != memory.dtype or slots.values.shape[1] < memory.shape[1]):
        slots = None  # not the buffers of this memory (a hand-built state): make new ones
    bounds = getattr(owner, "bounds", None)
    if index is not None and (bounds != (index.recent, index.relevant) or index.active.shape[0] != B
                              or index.count > memory.shape[1] or index.active.device != memory.device):
        index = None  # another module's (or a hand-built state's): the layer indexes the n slots afresh
    return Resolved(h, c, memory, slots, step, index if bounds is not None else None)
