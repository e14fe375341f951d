"""`SlotIndex`: which slots a bounded memory attends over (relevancy screening, Kerg et al., NeurIPS 2020).

A bounded memory (`recent_slots=W, relevant_slots=M`) still writes every slot into the sequence's SlotBuffers
(the backward reads them there, by their global index), but each step attends only over the *active* slots
of its row: the W most recently written (*recent*) and up to M older ones (*kept*). Per row:
- a recent slot accumulates *relevance*, the sum of the sparsified attention weights it receives while recent;
- order within a step: cell, attention, relevance update, slot write;
- when a write makes W + 1 recent slots, the oldest recent slot leaves the recent set: it joins the kept slots
  if fewer than M are kept; otherwise it replaces the least relevant kept slot if its relevance is strictly
  greater (among kept slots of equal relevance, the oldest is replaced); otherwise it is dropped;
- a kept slot's relevance no longer changes. M = 0 is a sliding window of W slots.
Every kept slot is older than every recent one, so the active slots in write order are the kept ones, then the
recent ones: `active[b, :count]` lists them so, `active[b, :kept]` being the kept ones. The op sees them as a
compact memory of `count` slots, so its "ties go to the lower index" means "to the older slot".

Every row writes at the same steps and the rule never depends on a row's values to decide how many slots stay,
so `count` and `kept` are the same for every row; only which slots differs. The decisions are constants: the
gradient flows through the slots that stay, exactly (sparse replay).

This module is the Python implementation (the per-step path's); csrc/sab_lstm.cpp implements the same rule for
the fused path, and the tests hold both to a plain per-row reference.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor


def check_bounds(recent_slots, relevant_slots) -> Optional[Tuple[int, int]]:
    """(W, M) from the module arguments, or None for the unbounded memory; ValueError/TypeError naming them."""
    if recent_slots is None and relevant_slots is None:
        return None
    if recent_slots is None or relevant_slots is None:
        missing = "recent_slots" if recent_slots is None else "relevant_slots"
        raise ValueError(f"recent_slots and relevant_slots go together (both None: the unbounded memory); "
                         f"{missing} is None, the other is {relevant_slots if recent_slots is None else recent_slots!r}")
    for name, v, low in (("recent_slots", recent_slots, 1), ("relevant_slots", relevant_slots, 0)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"{name} must be an int or None, got {type(v).__name__}")
        if v < low:
            raise ValueError(f"{name} must be >= {low} (or None), got {v}")
    return recent_slots, relevant_slots


class SlotIndex:
    """The active slots of every row of a bounded memory (see the module docstring). A value: `write` and
    `add_relevance` return a new index and never change this one, so a state can be continued twice.

    active (B, W + M + 1) int64: global slot indices, the first `count` valid, kept ones first, in write order;
    relevance (B, W + M + 1): each active slot's relevance (the memory's dtype); count, kept: ints.
    """

    __slots__ = ("recent", "relevant", "active", "relevance", "count", "kept")

    def __init__(self, recent: int, relevant: int, active: Tensor, relevance: Tensor, count: int, kept: int):
        self.recent, self.relevant = recent, relevant
        self.active, self.relevance, self.count, self.kept = active, relevance, count, kept

    @classmethod
    def new(cls, batch: int, n0: int, recent: int, relevant: int, device, dtype) -> "SlotIndex":
        """The index of a memory whose n0 slots were written in order and never attended to (relevance 0):
        slot 0 alone for a new sequence (h0)."""
        A = recent + relevant + 1
        index = cls(recent, relevant, torch.zeros((batch, A), dtype=torch.int64, device=device),
                    torch.zeros((batch, A), dtype=dtype, device=device), 0, 0)
        for j in range(n0):
            index = index.write(j)
        return index

    def __reduce__(self):
        return (SlotIndex, (self.recent, self.relevant, self.active, self.relevance, self.count, self.kept))

    def to_global(self, indices: Tensor) -> Tensor:
        """Compact indices (B, k) into the active slots (-1: none) as global slot indices (-1 kept)."""
        g = self.active.gather(1, indices.clamp(min=0))
        return torch.where(indices >= 0, g, indices)

    def compact(self, indices: Tensor) -> Tensor:
        """Global slot indices (B, k) of active slots (-1: none) as compact indices into the active slots. The
        active slots are in write order, so their global indices increase along each row."""
        pos = torch.searchsorted(self.active[:, : self.count].contiguous(), indices.clamp(min=0).contiguous())
        return torch.where(indices >= 0, pos, indices)

    def gather(self, buffer: Tensor) -> Tensor:
        """The active rows of a (B, capacity, X) buffer, compact: (B, count, X)."""
        idx = self.active[:, : self.count]
        return buffer.gather(1, idx[:, :, None].expand(-1, -1, buffer.shape[2]))

    def add_relevance(self, weights: Tensor, indices: Tensor) -> "SlotIndex":
        """After an attention over the active slots: weights (B, k) given to compact indices (B, k) (-1: none)
        add to the relevance of the recent ones (compact index >= kept)."""
        recent = indices >= self.kept
        rel = self.relevance.scatter_add(1, indices.clamp(min=0),
                                         torch.where(recent, weights.detach().to(self.relevance.dtype), 0.0))
        return SlotIndex(self.recent, self.relevant, self.active, rel, self.count, self.kept)

    def write(self, slot: int) -> "SlotIndex":
        """After global slot `slot` is written: it joins the recent slots, and the rule above applies."""
        active, rel = self.active.clone(), self.relevance.clone()
        count, kept = self.count, self.kept
        active[:, count] = slot
        rel[:, count] = 0
        count += 1
        if count - kept <= self.recent:
            return SlotIndex(self.recent, self.relevant, active, rel, count, kept)
        if kept < self.relevant:  # the oldest recent slot (at position kept) joins the kept ones
            return SlotIndex(self.recent, self.relevant, active, rel, count, kept + 1)
        B, A = active.shape
        leaving = torch.full((B,), kept, dtype=torch.int64, device=active.device)
        if kept > 0:
            least = rel[:, :kept].argmin(1)  # the first (oldest) of equal minima
            replace = rel[:, kept] > rel.gather(1, least[:, None])[:, 0]
            # Removing the least relevant kept slot shifts the leaving one into the last kept position.
            leaving = torch.where(replace, least, leaving)
        pos = torch.arange(A, device=active.device)
        src = (pos[None, :] + (pos[None, :] >= leaving[:, None]).long()).clamp(max=A - 1)
        return SlotIndex(self.recent, self.relevant, active.gather(1, src), rel.gather(1, src), count - 1, kept)

    def select(self, rows: Tensor) -> "SlotIndex":
        """The index of a subset of the rows (rows (b,) int64)."""
        return SlotIndex(self.recent, self.relevant, self.active[rows], self.relevance[rows], self.count, self.kept)

    def __repr__(self) -> str:
        return f"SlotIndex(recent={self.recent}, relevant={self.relevant}, count={self.count}, kept={self.kept})"


torch.serialization.add_safe_globals([SlotIndex])
