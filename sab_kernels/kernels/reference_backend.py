"""The reference as a backend: forward from `reference_forward`, backward from `reference_backward`.

Used for `backend="reference"` and as the CPU fallback when the compiled extension is missing.
"""

from __future__ import annotations

from ..reference import EPS, reference_backward, reference_forward


def forward(query, keys, values, score_weight, k_top: int, lengths, eps: float = EPS):
    return reference_forward(query, keys, values, score_weight, k_top, lengths, eps)


def backward(grad_summary, grad_weights, query, keys, values, score_weight, k_top: int, lengths, weights, indices, threshold,
             eps: float = EPS):
    return reference_backward(grad_summary, grad_weights, query, keys, values, score_weight, k_top, lengths, indices, threshold,
                              eps)
