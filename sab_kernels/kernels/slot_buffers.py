"""`SlotBuffers`: the memory of a sequence, slots and their keys, in buffers that grow and are shared by value.

values (B, capacity, H) holds the slots m_i and keys (B, capacity, D) their keys W_m m_i. Rows [0, used) have
been written, and a written row never changes. A state holds a prefix of n <= used rows, so many states (the
chunks of one sequence, the branches of one state, a thread's copy) can share one pair of buffers:
- `reserve(n, m)` returns buffers into which m slots can be written after the first n. The caller gets the same
  buffers when it holds their newest row (n == used) and they have room: the write appends in place, nothing
  is copied. Otherwise (another continuation of the same prefix already wrote past n, or the buffers are full)
  the n rows are copied into new buffers whose capacity grows geometrically, so streaming one slot per call
  costs O(1) amortised copies per slot. The claim is taken under a lock: two threads continuing one state get
  two buffers, never one.
- A key is W_m m_i for the W_m of the call that wrote it. `keys_valid_for(W_m)` tells whether the cached keys
  were computed with this very W_m (the same tensor, not written since, equal values); after an optimizer step
  a continuation recomputes all n keys once, into new buffers (earlier chunks' graphs still read the old keys).
The buffers are plain storage: writers go through raw pointers (the C++ path) or untracked aliases, and the
graph that makes slots differentiable lives outside them (see sab_kernels/nn/memory.py and sab_lstm_fused.py).
"""

from __future__ import annotations

import threading
import weakref
from typing import Optional

import torch
from torch import Tensor

# Smallest capacity of a new pair of buffers, so the first slots of a stream do not reallocate every call.
MIN_CAPACITY = 16
# Capacity after a reallocation: GROWTH x what is needed (the doubling that makes appends amortised O(1)).
GROWTH = 2


def alias(buffer: Tensor, n: int) -> Tensor:
    """The first n rows of a (B, capacity, X) buffer as a tensor that shares its storage without being a view
    of it: its own version counter, so appending rows past n (in place) never trips autograd's check on a
    tensor saved for backward, and it can be an autograd Function's output."""
    B, _, X = buffer.shape
    out = buffer.new_empty(0)
    return out.set_(buffer.untyped_storage(), buffer.storage_offset(), (B, n, X), buffer.stride())


class _KeyStamp:
    """Which W_m computed the cached keys: the parameter itself (weakly), its version and a copy of its values.
    The copy catches writes that bypass the version counter (`weight.data.copy_(...)`) on CPU tensors; on a GPU
    comparing it would wait for the device (a host sync per call), so there only the version counts."""

    __slots__ = ("ref", "version", "snapshot")

    def __init__(self, key_weight: Tensor):
        self.ref = weakref.ref(key_weight)
        self.version = key_weight._version
        self.snapshot = key_weight.detach().clone()

    def matches(self, key_weight: Tensor) -> bool:
        return (self.ref() is key_weight and self.version == key_weight._version
                and self.snapshot.dtype == key_weight.dtype and self.snapshot.device == key_weight.device
                and (key_weight.device.type == "cuda" or torch.equal(self.snapshot, key_weight.detach())))


class SlotBuffers:
    """Slot values (B, capacity, H) and keys (B, capacity, D); rows [0, used) written (see the module docstring)."""

    __slots__ = ("values", "keys", "used", "stamp", "_lock", "__weakref__")

    def __init__(self, values: Tensor, keys: Tensor, used: int = 0, stamp: Optional[_KeyStamp] = None):
        self.values, self.keys, self.used, self.stamp = values, keys, int(used), stamp
        self._lock = threading.Lock()

    @classmethod
    def allocate(cls, batch: int, capacity: int, hidden: int, attn_dim: int, like: Tensor) -> "SlotBuffers":
        """Empty buffers. Zeros, not uninitialised memory: the reference backend scores every row (masking
        rows past n), and a row past n must never hold NaN garbage."""
        capacity = max(int(capacity), 1)
        return cls(like.new_zeros((batch, capacity, hidden)), like.new_zeros((batch, capacity, attn_dim)))

    @classmethod
    def from_slots(cls, slots: Tensor, key_weight: Tensor, extra: int, capacity: Optional[int] = None) -> "SlotBuffers":
        """New buffers holding `slots` (B, n, H) and their keys under `key_weight` (D, H), with room for `extra`
        more slots (claimed: the caller writes them) and `capacity` rows in all (default: what is needed, at
        least MIN_CAPACITY: a sequence run whole pays for no spare rows; a continuation grows them)."""
        B, n, H = slots.shape
        if capacity is None:
            capacity = max(MIN_CAPACITY, n + extra)
        buf = cls.allocate(B, capacity, H, key_weight.shape[0], slots)
        with torch.no_grad():
            buf.values[:, :n].copy_(slots)
        buf.write_keys(0, n, key_weight)
        buf.stamp, buf.used = _KeyStamp(key_weight), n + extra
        return buf

    @property
    def capacity(self) -> int:
        return self.values.shape[1]

    def keys_valid_for(self, key_weight: Tensor) -> bool:
        return self.stamp is not None and self.stamp.matches(key_weight)

    def reserve(self, n: int, extra: int, key_weight: Tensor) -> "SlotBuffers":
        """Buffers holding these buffers' first n rows, with valid keys under `key_weight`, and `extra` rows
        claimed after them: these buffers when that is safe, new ones otherwise (see the module docstring)."""
        if self.keys_valid_for(key_weight):
            with self._lock:
                if self.used == n and n + extra <= self.capacity:
                    self.used = n + extra
                    return self
            buf = SlotBuffers.allocate(self.values.shape[0], _grown(n + extra), self.values.shape[2],
                                       self.keys.shape[2], self.values)
            with torch.no_grad():
                buf.values[:, :n].copy_(self.values[:, :n])
                buf.keys[:, :n].copy_(self.keys[:, :n])
            buf.stamp, buf.used = self.stamp, n + extra
            return buf
        # Keys from another W_m (an optimizer step since): all n recomputed once, into new buffers.
        return SlotBuffers.from_slots(self.values[:, :n], key_weight, extra)

    def write_keys(self, j0: int, j1: int, key_weight: Tensor) -> None:
        """keys[:, j] = W_m values[:, j] for j in [j0, j1), one slot at a time: the same bits as the slot writes of
        both paths (a batched product may round differently)."""
        w_t = key_weight.detach().t().to(self.keys.dtype)
        with torch.no_grad(), torch.autocast(self.values.device.type, enabled=False):
            for j in range(j0, j1):  # (not mm's out=: a strided out= breaks a torch.compile graph)
                self.keys.select(1, j).copy_(torch.mm(self.values.select(1, j), w_t))

    def stamp_keys(self, key_weight: Tensor) -> None:
        """Record that the keys written so far were computed with `key_weight`."""
        if not self.keys_valid_for(key_weight):
            self.stamp = _KeyStamp(key_weight)

    def __deepcopy__(self, memo):
        # The lock cannot be copied; the copy is a new, independent family of buffers.
        new = SlotBuffers(self.values.clone(), self.keys.clone(), self.used, None)
        if self.stamp is not None:
            new.stamp = self.stamp  # the stamp refers to a parameter weakly; a copied module has new parameters
        memo[id(self)] = new
        return new


def slots_written(T: int, step0: int, k_att: int) -> int:
    """How many slots steps [step0, step0 + T) write (one every k_att steps): what a call reserves."""
    return (step0 + T) // k_att - step0 // k_att


def _grown(needed: int) -> int:
    return max(MIN_CAPACITY, GROWTH * needed)
