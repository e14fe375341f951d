"""The reference as a backend: forward from `reference_forward`, backward from `reference_backward`.

Used for `backend="reference"` and as the CPU fallback when the compiled extension is missing.
"""

from __future__ import annotations

from ..reference import reference_backward, reference_forward


def forward(query, keys, values, score_weight, k_top: int, lengths):
    return reference_forward(query, keys, values, score_weight, k_top, lengths)


def backward(grad_summary, grad_weights, query, keys, values, score_weight, k_top: int, lengths, weights, indices, threshold):
    return reference_backward(grad_summary, grad_weights, query, keys, values, score_weight, k_top, lengths, indices, threshold)
