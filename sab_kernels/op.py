"""`sab_kernels.sparse_attention`: one torch.library custom op with a hand-written sparse backward.

Two opaque ops in the `sab` namespace carry the work, so torch.compile sees through neither:
    sab::sparse_attention_forward  -> (summary, weights, indices, threshold)
    sab::sparse_attention_backward -> (grad_query, grad_keys, grad_values, grad_score_weight)
Both dispatch at run time to a backend of `sab_kernels.kernels` (Triton, C++ or the reference).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from ._validation import check_inputs, check_lengths_values
from .kernels import get_backend, resolve_backend
from .reference import EPS, SparseAttentionOutput


def _prepare(tensors):
    return [t.contiguous() for t in tensors]


def forward_impl(query, keys, values, score_weight, k_top: int, lengths: Tensor, backend: str = "auto", check_lengths: bool = True,
                 eps: float = EPS):
    """Run a backend's forward on validated inputs: (summary, weights, indices, threshold).

    lengths (B,) int64 is required here (the public wrapper fills it in); `check_lengths=False` skips the
    range check (one host sync) for callers that built lengths themselves. This is the body of
    sab::sparse_attention_forward; the SAB memory calls it directly to skip the dispatcher per step.
    """
    B, T, _ = keys.shape
    if check_lengths:
        check_lengths_values(lengths, T)
    if B == 0:
        return _forward_fake(query, keys, values, score_weight, k_top, lengths, backend, eps)
    impl = get_backend(resolve_backend(backend, query.device))
    query, keys, values, score_weight, lengths = _prepare((query, keys, values, score_weight, lengths))
    # k_top >= T means every row is in the softmax regime (n <= T <= k_top), as with k_top = T; clamping
    # keeps kernels that size buffers by k_top (dense attention passes a huge k_top) small.
    return tuple(impl.forward(query, keys, values, score_weight, min(k_top, T), lengths, eps))


def backward_impl(grad_summary, grad_weights, query, keys, values, score_weight, k_top: int, lengths, weights, indices, threshold,
                  backend: str = "auto", eps: float = EPS):
    """Run a backend's sparse backward: (grad_query, grad_keys, grad_values, grad_score_weight)."""
    if keys.shape[0] == 0:
        # Not the fake's empty tensors: grad_score_weight has D entries even when B = 0, and they must be 0.
        return tuple(torch.zeros_like(t, memory_format=torch.contiguous_format) for t in (query, keys, values, score_weight))
    impl = get_backend(resolve_backend(backend, query.device))
    args = _prepare((grad_summary, grad_weights, query, keys, values, score_weight))
    return tuple(impl.backward(*args, min(k_top, keys.shape[1]), *_prepare((lengths, weights, indices, threshold)), eps))


@torch.library.custom_op("sab::sparse_attention_forward", mutates_args=())
def _forward_op(
    query: Tensor, keys: Tensor, values: Tensor, score_weight: Tensor, k_top: int, lengths: Tensor, backend: str,
    eps: float = EPS,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    return forward_impl(query, keys, values, score_weight, k_top, lengths, backend, eps=eps)


@_forward_op.register_fake
def _forward_fake(query, keys, values, score_weight, k_top, lengths, backend, eps=EPS):
    B, T, _ = keys.shape
    k = min(k_top, T)
    return (
        values.new_empty((B, values.shape[2])),
        values.new_empty((B, k)),
        keys.new_empty((B, k), dtype=torch.int64),
        keys.new_empty((B,), dtype=torch.int64),
    )


@torch.library.custom_op("sab::sparse_attention_backward", mutates_args=())
def _backward_op(
    grad_summary: Tensor,
    grad_weights: Tensor,
    query: Tensor,
    keys: Tensor,
    values: Tensor,
    score_weight: Tensor,
    k_top: int,
    lengths: Tensor,
    weights: Tensor,
    indices: Tensor,
    threshold: Tensor,
    backend: str,
    eps: float = EPS,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    return backward_impl(grad_summary, grad_weights, query, keys, values, score_weight, k_top, lengths, weights, indices, threshold,
                         backend, eps)


@_backward_op.register_fake
def _backward_fake(grad_summary, grad_weights, query, keys, values, score_weight, k_top, lengths, weights, indices, threshold, backend,
                   eps=EPS):
    return (
        torch.empty_like(query, memory_format=torch.contiguous_format),
        torch.empty_like(keys, memory_format=torch.contiguous_format),
        torch.empty_like(values, memory_format=torch.contiguous_format),
        torch.empty_like(score_weight, memory_format=torch.contiguous_format),
    )


def _setup_context(ctx, inputs, output):
    query, keys, values, score_weight, k_top, lengths, backend, eps = inputs
    _, weights, indices, threshold = output
    ctx.save_for_backward(query, keys, values, score_weight, lengths, weights, indices, threshold)
    ctx.k_top, ctx.backend, ctx.eps = k_top, backend, eps


def _backward(ctx, grad_summary, grad_weights, _grad_indices, _grad_threshold):
    query, keys, values, score_weight, lengths, weights, indices, threshold = ctx.saved_tensors
    if grad_summary is None:
        grad_summary = values.new_zeros((keys.shape[0], values.shape[2]))
    if grad_weights is None:
        grad_weights = torch.zeros_like(weights)
    args = (grad_summary, grad_weights, query, keys, values, score_weight, ctx.k_top, lengths, weights, indices, threshold)
    if torch.is_grad_enabled():  # create_graph=True: see _DIFFERENTIABLE_BACKWARD
        return (*backward_impl(*args, _DIFFERENTIABLE_BACKWARD, ctx.eps), None, None, None, None)
    return (*_backward_op(*args, ctx.backend, ctx.eps), None, None, None, None)


# The C++ and Triton backwards return plain tensors: under create_graph=True (autograd runs the backward with
# grad mode on) their gradients would silently have no derivative. The reference's written-out backward is
# the same function in differentiable PyTorch ops, on any device, so double backward goes through it on
# every backend: first derivatives equal the kernels' to rounding, second derivatives are exact.
_DIFFERENTIABLE_BACKWARD = "reference"

_forward_op.register_autograd(_backward, setup_context=_setup_context)


class _EagerSparseAttention(torch.autograd.Function):
    """The same forward and backward as the custom op, without the dispatcher's per-call cost.

    SAB calls the op once per time step at small sizes, where torch.library's Python machinery costs
    more than the kernels; eager calls come here, traced (torch.compile) calls go to the custom op.
    Both run `forward_impl`/`backward_impl`, so their results are bitwise equal (tested).
    """

    @staticmethod
    def forward(ctx, query, keys, values, score_weight, k_top, lengths, backend, check_lengths, eps):
        summary, weights, indices, threshold = forward_impl(query, keys, values, score_weight, k_top, lengths, backend, check_lengths, eps)
        ctx.save_for_backward(query, keys, values, score_weight, lengths, weights, indices, threshold)
        ctx.k_top, ctx.backend, ctx.eps = k_top, backend, eps
        ctx.mark_non_differentiable(indices, threshold)
        return summary, weights, indices, threshold

    @staticmethod
    def backward(ctx, grad_summary, grad_weights, _grad_indices, _grad_threshold):
        query, keys, values, score_weight, lengths, weights, indices, threshold = ctx.saved_tensors
        backend = _DIFFERENTIABLE_BACKWARD if torch.is_grad_enabled() else ctx.backend  # create_graph=True
        grads = backward_impl(grad_summary, grad_weights, query, keys, values, score_weight, ctx.k_top, lengths, weights, indices, threshold,
                              backend, ctx.eps)
        return (*grads, None, None, None, None, None)


def sparse_attention(
    query: Tensor,
    keys: Tensor,
    values: Tensor,
    score_weight: Tensor,
    k_top: int,
    *,
    lengths: Optional[Tensor] = None,
    backend: str = "auto",
    eps: float = EPS,
) -> SparseAttentionOutput:
    """Sparse attention of one SAB step: score every memory slot, keep the top `k_top`, sum them.

    s_i = sum_d w_d * tanh(q_d + k_{i,d}). With n valid slots in a row:
    n > k_top: tau = the (k_top+1)-th largest score; a_i = relu(s_i - tau) / (sum_j relu(s_j - tau) + eps)
    for the k_top largest (ties to the lower index), 0 elsewhere. 1 <= n <= k_top: softmax over the n slots.
    n = 0: summary 0, weights 0, indices -1. A NaN score ranks above every number and makes its row NaN.

    Args:
        query: (B, D) W_h h_hat + b, the provisional state's half of the scoring MLP.
        keys: (B, T, D) W_m m_i, the memory's half, cached per slot.
        values: (B, T, H) the memory slots m_i.
        score_weight: (D,) w, the MLP's output layer.
        k_top: number of slots kept (>= 1).
        lengths: (B,) integer, optional: valid slots per row, in [0, T]; default all T.
        backend: "auto" (CUDA -> Triton; CPU -> C++ kernels, or the Triton interpreter when
            TRITON_INTERPRET=1), or one of "triton", "cpu", "reference".
        eps: the sparsifier's epsilon (> 0). The default, 1e-7, is the paper's; the gradient of the weights
            scales as 1 / (sum_j relu(s_j - tau) + eps), so when the kept scores nearly tie with tau a larger
            eps bounds it (see bench/results/training/copy_T100_h128/README.md).

    Returns:
        SparseAttentionOutput(summary (B, H), weights (B, k), indices (B, k) int64), k = min(k_top, T),
        ordered by descending score; unused entries have weight 0 and index -1.

    Gradients reach query, score_weight, the selected rows of keys and values and the threshold key row;
    every other row's gradient is exactly zero. float16/bfloat16 are accumulated in float32. B = 0 gives
    empty outputs and all-zero gradients (score_weight's too).

    Double backward (`torch.autograd.grad(..., create_graph=True)`, e.g. a gradient penalty) works on every
    backend: with grad mode on, the backward runs the reference's written-out backward (PyTorch ops, on
    the inputs' device) instead of the C++/Triton kernel, so the gradients are themselves differentiable
    (slower; equal to the kernels' gradients up to rounding). Not supported inside torch.compile (a
    PyTorch limitation of compiled backward graphs).
    """
    check_inputs(query, keys, values, score_weight, k_top, lengths, backend, eps)
    B, T, _ = keys.shape
    user_lengths = lengths is not None
    if user_lengths:
        lengths = lengths.to(torch.int64)
    else:
        lengths = torch.full((B,), T, dtype=torch.int64, device=keys.device)
    if torch.compiler.is_compiling():
        summary, weights, indices, _ = _forward_op(query, keys, values, score_weight, k_top, lengths, backend, float(eps))
    else:
        summary, weights, indices, _ = _EagerSparseAttention.apply(
            query, keys, values, score_weight, k_top, lengths, backend, user_lengths, float(eps)
        )
    return SparseAttentionOutput(summary, weights, indices)
