"""The plain-PyTorch reference of the SAB sparse-attention op (SPEC section 1).

This is the oracle: every kernel is tested against it and every benchmark uses it as the baseline.
It is written for clarity first; autograd differentiates it, so its gradient is the definition of the
op's backward (sparse by construction: only selected slots and the threshold slot see gradient).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch

EPS = 1e-7  # the paper's sparsifier epsilon; every entry point takes another as `eps`


class SparseAttentionOutput(NamedTuple):
    """Result of :func:`sab_kernels.sparse_attention`.

    summary: (B, H) sum of the kept memory rows, weighted.
    weights: (B, k) weights of the kept slots, k = min(k_top, T), by descending score; 0 where unused.
    indices: (B, k) int64 slot index of each weight; -1 where unused.
    """

    summary: torch.Tensor
    weights: torch.Tensor
    indices: torch.Tensor


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float16/bfloat16 are accumulated in float32; float32/float64 in themselves."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def raw_scores(query: torch.Tensor, keys: torch.Tensor, score_weight: torch.Tensor) -> torch.Tensor:
    """s[b, i] = sum_d w_d * tanh(q[b, d] + k[b, i, d]), shape (B, T), in the compute dtype."""
    ct = compute_dtype(query.dtype)
    hidden = torch.tanh(query.to(ct)[:, None, :] + keys.to(ct))
    # A plain sum, not a matmul: BLAS gives equal key rows scores an ulp apart, which would break ties.
    return (hidden * score_weight.to(ct)).sum(-1)


def rank_slots(scores: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Slot order per row: descending score, ties to the lower index, invalid slots last.

    NaN ranks above every number (as in ``torch.sort``); slots i >= lengths[b] rank below every valid slot.
    """
    T = scores.shape[1]
    valid = torch.arange(T, device=scores.device) < lengths[:, None]
    # Valid slots first, then by score: a stable sort by score, then a stable sort by validity.
    by_score = torch.sort(scores.detach(), dim=1, descending=True, stable=True).indices
    valid_sorted = valid.gather(1, by_score)
    by_valid = torch.sort(valid_sorted.to(torch.int8), dim=1, descending=True, stable=True).indices
    return by_score.gather(1, by_valid)


def sparse_attention_reference(
    query: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    score_weight: torch.Tensor,
    k_top: int,
    lengths: Optional[torch.Tensor] = None,
    eps: float = EPS,
) -> SparseAttentionOutput:
    """Reference SAB sparse attention; see :func:`sab_kernels.sparse_attention` for the contract.

    query (B, D), keys (B, T, D), values (B, T, H), score_weight (D,), lengths (B,) or None; eps > 0.
    Returns SparseAttentionOutput(summary (B, H), weights (B, k), indices (B, k)), k = min(k_top, T).
    """
    summary, weights, indices, _ = reference_forward(query, keys, values, score_weight, k_top, lengths, eps)
    return SparseAttentionOutput(summary, weights, indices)


def reference_forward(query, keys, values, score_weight, k_top: int, lengths: Optional[torch.Tensor] = None,
                      eps: float = EPS):
    """The reference with the threshold slot too: (summary, weights, indices, threshold).

    threshold (B,) int64 is the slot holding the (k_top+1)-th score (tau) for rows with n > k_top, else -1.
    """
    B, T, _ = keys.shape
    dtype, ct = values.dtype, compute_dtype(values.dtype)
    if lengths is None:
        lengths = torch.full((B,), T, dtype=torch.int64, device=keys.device)
    else:
        # Padding slots (i >= lengths[b]) do not exist: zero them, so that whatever they hold (NaN, inf)
        # reaches no output and, through autograd, no gradient (0 * NaN would).
        valid = (torch.arange(T, device=keys.device) < lengths.to(keys.device)[:, None])[:, :, None]
        keys = torch.where(valid, keys, torch.zeros((), dtype=keys.dtype, device=keys.device))
        values = torch.where(valid, values, torch.zeros((), dtype=values.dtype, device=values.device))
    n = lengths.to(torch.int64)[:, None]  # (B, 1) valid slots per row
    k = min(k_top, T)

    scores = raw_scores(query, keys, score_weight)  # (B, T)
    order = rank_slots(scores, lengths)  # (B, T)
    top_idx = order[:, :k]
    top = scores.gather(1, top_idx)  # (B, k), descending
    used = torch.arange(k, device=keys.device) < n  # (B, k): slot exists

    # Sparse rows (n > k_top): subtract the (k_top+1)-th score, ReLU, normalise.
    if T > k_top:
        threshold = torch.where(n > k_top, order[:, k_top : k_top + 1], -1)[:, 0]
        tau = scores.gather(1, order[:, k_top : k_top + 1])
        relu = torch.relu(top - tau)
        sparse = relu / (relu.sum(1, keepdim=True) + eps)
    else:
        threshold = torch.full((B,), -1, dtype=torch.int64, device=keys.device)
        sparse = torch.zeros_like(top)
    # Few-slot rows (1 <= n <= k_top): softmax over the valid slots. Empty rows get logits 0 so no NaN.
    logits = torch.where(used, top, torch.full_like(top, float("-inf")))
    logits = torch.where(n > 0, logits, torch.zeros_like(logits))
    dense = torch.softmax(logits, dim=1)

    weights = torch.where(n > k_top, sparse, dense)
    weights = torch.where(used, weights, torch.zeros_like(weights))
    indices = torch.where(used, top_idx, torch.full_like(top_idx, -1))

    rows = values.gather(1, top_idx[:, :, None].expand(-1, -1, values.shape[2])).to(ct)  # (B, k, H)
    contrib = torch.where(used[:, :, None], weights[:, :, None] * rows, torch.zeros_like(rows))
    summary = contrib.sum(1)
    return summary.to(dtype), weights.to(dtype), indices, threshold


def reference_backward(grad_summary, grad_weights, query, keys, values, score_weight, k_top: int, lengths, indices, threshold,
                       eps: float = EPS):
    """The op's backward written out in PyTorch: what every kernel's backward computes.

    Tested against autograd through `sparse_attention_reference`. Recomputes the scores of the selected
    slots and of the threshold slot only, so gradient is non-zero on those rows alone.
    Returns (grad_query (B, D), grad_keys (B, T, D), grad_values (B, T, H), grad_score_weight (D,)).
    """
    B, T, D = keys.shape
    H = values.shape[2]
    dtype, ct = values.dtype, compute_dtype(values.dtype)
    used = indices >= 0  # (B, k)
    sparse_row = (threshold >= 0)[:, None]  # (B, 1): n > k_top
    live = torch.cat([used, sparse_row], dim=1)[:, :, None]  # (B, k+1, 1): entries that name a slot
    sel = indices.clamp(min=0)
    rows = torch.cat([sel, threshold.clamp(min=0)[:, None]], dim=1)  # (B, k+1): selected, then threshold
    # Dead entries point at slot 0, which may be padding holding anything: they see a zero row instead
    # and add nothing anywhere, so padding is invisible (as in the kernels, which never read it).
    zero = torch.zeros((), dtype=ct, device=keys.device)
    k_rows = torch.where(live, keys.gather(1, rows[:, :, None].expand(-1, -1, D)).to(ct), zero)
    hidden = torch.tanh(query.to(ct)[:, None, :] + k_rows)
    s = (hidden * score_weight.to(ct)).sum(-1)  # (B, k+1), summed exactly as in raw_scores
    s_sel, tau = s[:, :-1], s[:, -1:]

    # Recompute the weights in the compute dtype, exactly as the forward does.
    relu = torch.relu(s_sel - tau)
    z = relu.sum(1, keepdim=True) + eps
    # Rows with no valid slot give NaN here; they are masked to 0 below.
    dense = torch.softmax(torch.where(used, s_sel, torch.full_like(s_sel, float("-inf"))), 1)
    a = torch.where(sparse_row, relu / z, dense)
    a = torch.where(used, a, torch.zeros_like(a))

    v_sel = torch.where(used[:, :, None], values.gather(1, sel[:, :, None].expand(-1, -1, H)).to(ct), zero)
    g_a = grad_weights.to(ct) + (v_sel * grad_summary.to(ct)[:, None, :]).sum(-1)  # dL/da (B, k)
    g_a = torch.where(used, g_a, torch.zeros_like(g_a))
    centred = g_a - (a * g_a).sum(1, keepdim=True)
    g_sparse = torch.where(relu > 0, centred / z, torch.zeros_like(centred))  # ReLU at 0 passes nothing
    g_sel = torch.where(sparse_row, g_sparse, a * centred)
    g_sel = torch.where(used, g_sel, torch.zeros_like(g_sel))
    g_tau = torch.where(sparse_row, -g_sel.sum(1, keepdim=True), torch.zeros_like(tau))
    g_s = torch.cat([g_sel, g_tau], dim=1)  # dL/ds for the k+1 rows

    d_pre = torch.where(live, g_s[:, :, None] * (1 - hidden * hidden) * score_weight.to(ct), zero)  # dL/d(q + k_row)
    grad_query = d_pre.sum(1)
    grad_score_weight = torch.where(live, g_s[:, :, None] * hidden, zero).sum((0, 1))
    # Rows are distinct except dead entries, which add exact zeros, so the scatter is deterministic.
    grad_keys = torch.zeros((B, T, D), dtype=ct, device=keys.device).scatter_add_(1, rows[:, :, None].expand(-1, -1, D), d_pre)
    g_v = torch.where(used[:, :, None], a[:, :, None] * grad_summary.to(ct)[:, None, :], torch.zeros_like(v_sel))
    grad_values = torch.zeros((B, T, H), dtype=ct, device=keys.device).scatter_add_(1, sel[:, :, None].expand(-1, -1, H), g_v)
    return grad_query.to(dtype), grad_keys.to(dtype), grad_values.to(dtype), grad_score_weight.to(dtype)
