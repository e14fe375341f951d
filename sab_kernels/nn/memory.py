"""`SparseAttentiveMemory`: the SAB memory, its scoring MLP and sparse attention over it (SPEC section 2).

The memory holds slots m_i (B, H) and their cached keys W_m m_i (B, D). Two copies of each slot exist:
  - a preallocated buffer (B, capacity, H/D), written in place under no_grad (doubling when full), which
    the op reads whole with lengths = n (contiguous, never copied): writing a slot costs one (H x D) key
    projection and O(H + D) stores per row, not a copy of the memory;
  - the graph-connected slot tensors (the h_t that was appended), kept in a Python list.
`attend` runs a custom autograd Function whose forward calls the raw op on the buffer views and whose
backward calls the op's sparse backward, folds the key gradient into the slot gradient
(dL/dm_i = dL/dv_i + W_m^T dL/dk_i, and dL/dW_m in one matmul) and hands gradient only to the slot tensors
that were selected (or held the threshold score); every other slot gets None, so autograd never walks into
its graph. That is sparse replay: gradient re-enters the past only at the slots the op chose.
"""

from __future__ import annotations

from typing import List, NamedTuple, Optional

import torch
from torch import Tensor, nn

import sab_kernels.op  # noqa: F401 - registers torch.ops.sab.*

_forward_op = torch.ops.sab.sparse_attention_forward
_backward_op = torch.ops.sab.sparse_attention_backward


class Attention(NamedTuple):
    """One `attend` call. summary (B, H); weights, indices (B, k); threshold (B,) int64 slot of tau or -1."""

    summary: Tensor
    weights: Tensor
    indices: Tensor
    threshold: Tensor


class _SparseReplay(torch.autograd.Function):
    """summary = op(query, keys[:, :n], values[:, :n], w); gradient flows to the selected slot tensors only.

    Inputs: (memory, n, k_top, backend, query (B, D), score_weight (D,), key_weight W_m (D, H),
    *value_slots (n x (B, H))). Keys are W_m m_i, cached in the buffer. The buffer views are held by
    reference: slots below n never change.
    """

    @staticmethod
    def forward(ctx, memory, n, k_top, backend, query, score_weight, key_weight, *slots):
        # The whole preallocated buffer goes to the op with lengths = n: contiguous, so nothing is copied,
        # and the kernels read only slots below n. Later writes land at rows >= n, which this step never reads.
        keys, values = memory._keys, memory._values
        lengths = torch.full((query.shape[0],), n, dtype=torch.int64, device=query.device)
        summary, weights, indices, threshold = _forward_op(query, keys, values, score_weight, k_top, lengths, backend)
        ctx.save_for_backward(query, score_weight, key_weight, weights, indices, threshold)
        ctx.keys, ctx.values, ctx.lengths, ctx.n, ctx.k_top, ctx.backend = keys, values, lengths, n, k_top, backend
        ctx.mark_non_differentiable(indices, threshold)
        return summary, weights, indices, threshold

    @staticmethod
    def backward(ctx, grad_summary, grad_weights, _gi, _gt):
        query, score_weight, key_weight, weights, indices, threshold = ctx.saved_tensors
        if grad_summary is None:
            grad_summary = torch.zeros_like(ctx.values[:, 0])
        if grad_weights is None:
            grad_weights = torch.zeros_like(weights)
        g_query, g_keys, g_values, g_w = _backward_op(
            grad_summary, grad_weights, query, ctx.keys, ctx.values, score_weight, ctx.k_top, ctx.lengths,
            weights, indices, threshold, ctx.backend,
        )
        # Only the k selected rows and the threshold row of each batch row carry gradient: pick them out of
        # the flattened (B * capacity) rows with index_select (cheaper than gather with expanded indices).
        D, H = key_weight.shape
        B, cap = g_keys.shape[0], g_keys.shape[1]
        rows = torch.cat([indices, threshold[:, None]], 1)  # (B, k+1), -1 where unused
        valid = (rows >= 0).unsqueeze(-1)
        slot = rows.clamp(min=0)
        batch = torch.arange(B, device=rows.device)[:, None]
        flat = (batch * cap + slot).reshape(-1)
        g_k = g_keys.reshape(B * cap, D).index_select(0, flat).view(B, -1, D) * valid  # (B, k+1, D)
        g_v = g_values.reshape(B * cap, H).index_select(0, flat).view(B, -1, H) * valid  # (B, k+1, H)
        m = ctx.values.reshape(B * cap, H).index_select(0, flat)  # (B (k+1), H) the slots themselves
        # k_i = W_m m_i: fold the key gradient into the slot's (W_m^T dk) and into W_m's (dk m_i^T).
        g_key_weight = g_k.reshape(-1, D).t() @ m
        g_rows = torch.addmm(g_v.reshape(-1, H), g_k.reshape(-1, D), key_weight)  # (B (k+1), H)
        g_slots = g_rows.new_zeros((B * ctx.n, H)).index_add_(0, (batch * ctx.n + slot).reshape(-1), g_rows)
        g_slots = g_slots.view(B, ctx.n, H)
        # Slots chosen by any batch row (or holding a threshold) get gradient; all others None (never visited).
        touched = set(rows.reshape(-1).tolist())
        touched.discard(-1)
        per_slot = g_slots.unbind(1)
        grads: List[Optional[Tensor]] = [None] * ctx.n
        for i in touched:
            grads[i] = per_slot[i]
        return (None, None, None, None, g_query, g_w, g_key_weight, *grads)


class SparseAttentiveMemory(nn.Module):
    """SAB memory with the scoring MLP s_i = w . tanh(W_h h_hat + b + W_m m_i).

    Args:
        hidden_size: H, size of a slot (the LSTM state).
        attn_dim: D, hidden width of the scoring MLP.
        k_top: slots kept per attention (>= 1); a value >= the number of slots gives dense softmax attention.
        backend: op backend, "auto" | "triton" | "cpu" | "reference".

    Parameters: query_proj (W_h, b): H -> D; key_proj (W_m, no bias): H -> D; score_weight (w): (D,).

    Use: `reset(h0)` starts a sequence with one slot holding h0 (B, H); `attend(h_hat)` -> Attention over
    the slots written so far; `append(h)` writes slot n (h (B, H) and its key W_m h (B, D)).
    """

    def __init__(self, hidden_size: int, attn_dim: int, k_top: int, backend: str = "auto"):
        super().__init__()
        if k_top < 1:
            raise ValueError(f"k_top must be >= 1, got {k_top}")
        self.hidden_size, self.attn_dim, self.k_top, self.backend = hidden_size, attn_dim, k_top, backend
        self.query_proj = nn.Linear(hidden_size, attn_dim, bias=True)
        self.key_proj = nn.Linear(hidden_size, attn_dim, bias=False)
        self.score_weight = nn.Parameter(torch.empty(attn_dim))
        nn.init.uniform_(self.score_weight, -attn_dim**-0.5, attn_dim**-0.5)
        self._values: Optional[Tensor] = None
        self._keys: Optional[Tensor] = None
        self._value_slots: List[Tensor] = []

    @property
    def size(self) -> int:
        """Number of slots written in the current sequence."""
        return len(self._value_slots)

    @property
    def values(self) -> Tensor:
        """(B, n, H) the slots, detached (read-only view of the buffer)."""
        return self._values[:, : self.size]

    @property
    def keys(self) -> Tensor:
        """(B, n, D) the cached keys W_m m_i, detached."""
        return self._keys[:, : self.size]

    @property
    def slots(self) -> List[Tensor]:
        """The graph-connected slot tensors m_i (each (B, H)), in write order."""
        return list(self._value_slots)

    def reset(self, h0: Tensor, capacity: int = 64) -> None:
        """Start a new sequence: drop all slots and write h0 (B, H) as slot 0. `capacity` preallocates."""
        B, H = h0.shape
        capacity = max(int(capacity), 1)
        # Zeros, not empty: the reference backend scores every row of the buffer (and masks rows >= n).
        self._values = h0.new_zeros((B, capacity, H))
        self._keys = h0.new_zeros((B, capacity, self.attn_dim))
        self._value_slots = []
        self.append(h0)

    def append(self, h: Tensor) -> None:
        """Write h (B, H) and its key W_m h (B, D) as the next slot: O(B H D) for the key, in place."""
        n = self.size
        if n == self._values.shape[1]:
            self._grow()
        with torch.no_grad():
            self._values[:, n] = h
            self._keys[:, n] = h @ self.key_proj.weight.t()
        self._value_slots.append(h)

    def _grow(self) -> None:
        # A new buffer of twice the capacity; views of the old one held by earlier steps stay valid.
        n = self.size
        old_v, old_k = self._values, self._keys
        self._values = old_v.new_zeros((old_v.shape[0], 2 * n, old_v.shape[2]))
        self._keys = old_k.new_zeros((old_k.shape[0], 2 * n, old_k.shape[2]))
        self._values[:, :n] = old_v[:, :n]
        self._keys[:, :n] = old_k[:, :n]

    def attend(self, h_hat: Tensor) -> Attention:
        """Sparse attention of the provisional state h_hat (B, H) over the slots written so far.

        Returns Attention(summary (B, H), weights (B, k), indices (B, k), threshold (B,)) with
        k = min(k_top, buffer capacity); entries past the n written slots have weight 0 and index -1.
        Backward: gradient reaches query_proj, score_weight and only the selected/threshold slots' graphs.
        """
        if self._values is None or self.size == 0:
            raise RuntimeError("SparseAttentiveMemory.attend called before reset()")
        query = self.query_proj(h_hat)
        out = _SparseReplay.apply(
            self, self.size, self.k_top, self.backend, query, self.score_weight, self.key_proj.weight, *self._value_slots
        )
        return Attention(*out)

    def extra_repr(self) -> str:
        return f"hidden_size={self.hidden_size}, attn_dim={self.attn_dim}, k_top={self.k_top}, backend={self.backend!r}"
