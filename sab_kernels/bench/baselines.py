"""The baseline a user would write without this package: materialise every score, `torch.topk`, gather.

Same contract and outputs as `sab_kernels.sparse_attention` for rows with more than `k_top` slots (every
benchmark case), so the verifier checks it against the reference like any other implementation. Autograd
differentiates it: the backward runs through the dense (B, T, D) tanh, which is the cost the fused op avoids.
"""

from __future__ import annotations

import torch

from ..reference import EPS, SparseAttentionOutput, compute_dtype


def dense_topk_attention(query, keys, values, score_weight, k_top: int) -> SparseAttentionOutput:
    """SAB sparse attention written the obvious way. query (B, D), keys (B, T, D), values (B, T, H), w (D,).

    Requires T > k_top (no ragged rows): the few-slot softmax branch of the contract is left out, as a user
    would. Half types are upcast to float32 like the contract asks. Ties go wherever `torch.topk` puts them.
    """
    B, T, _ = keys.shape
    if T <= k_top:
        raise ValueError(f"dense_topk_attention needs T > k_top, got T={T}, k_top={k_top}")
    ct = compute_dtype(values.dtype)
    scores = torch.tanh(query.to(ct)[:, None, :] + keys.to(ct)) @ score_weight.to(ct)  # (B, T)
    top = torch.topk(scores, k_top + 1, dim=1)  # the k_top kept slots and the threshold, descending
    kept, tau, indices = top.values[:, :k_top], top.values[:, k_top:], top.indices[:, :k_top]
    r = torch.relu(kept - tau)
    weights = r / (r.sum(1, keepdim=True) + EPS)
    rows = values.gather(1, indices[:, :, None].expand(-1, -1, values.shape[2])).to(ct)  # (B, k_top, H)
    summary = (weights[:, :, None] * rows).sum(1)
    return SparseAttentionOutput(summary.to(values.dtype), weights.to(values.dtype), indices)
