"""The reference itself: hand-checked values, the paper's sparsifier, gradcheck, and its written-out backward."""

import functools

import pytest
import torch

from op_cases import SMALL_CASES, Case, case_params, check_backend, check_padding_invisible, make_inputs
from sab_kernels import sparse_attention
from sab_kernels.reference import EPS, raw_scores, reference_backward, reference_forward, sparse_attention_reference


def _inputs_with_scores(scores):
    """Inputs whose raw scores are exactly `scores` (B, T): D = 1, w = 1, keys = atanh(scores) - 0."""
    B, T = scores.shape
    query = torch.zeros(B, 1, dtype=torch.float64)
    keys = torch.atanh(scores.to(torch.float64))[:, :, None]
    values = torch.arange(B * T * 2, dtype=torch.float64).reshape(B, T, 2)
    return query, keys, values, torch.ones(1, dtype=torch.float64)


def test_sparsifier_subtracts_the_k_plus_1th_score():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.7, 0.3]])
    q, k, v, w = _inputs_with_scores(scores)
    out = sparse_attention_reference(q, k, v, w, 2)
    # top-2 are slots 1 (0.9) and 3 (0.7); tau = 0.5 -> r = (0.4, 0.2): exactly k_top non-zero weights.
    assert out.indices.tolist() == [[1, 3]]
    expected = torch.tensor([[0.4, 0.2]], dtype=torch.float64) / (0.6 + EPS)
    torch.testing.assert_close(out.weights, expected)
    torch.testing.assert_close(out.summary[0], expected[0, 0] * v[0, 1] + expected[0, 1] * v[0, 3])
    assert reference_forward(q, k, v, w, 2)[3].tolist() == [2]


def test_few_slots_use_softmax_and_empty_rows_are_zero():
    scores = torch.tensor([[0.2, -0.3, 0.6], [0.1, 0.2, 0.3]])
    q, k, v, w = _inputs_with_scores(scores)
    out = sparse_attention_reference(q, k, v, w, 4, lengths=torch.tensor([3, 0]))
    soft = torch.softmax(scores[0].double(), 0)
    torch.testing.assert_close(out.weights[0], soft.sort(descending=True).values)
    assert out.indices.tolist() == [[2, 0, 1], [-1, -1, -1]]
    assert (out.weights[1] == 0).all() and (out.summary[1] == 0).all()


def test_ties_break_to_the_lower_index():
    scores = torch.tensor([[0.5, 0.8, 0.8, 0.5, 0.8]])
    q, k, v, w = _inputs_with_scores(scores)
    out = sparse_attention_reference(q, k, v, w, 2)
    assert out.indices.tolist() == [[1, 2]]
    # tau = 0.8 as well: every kept score minus tau is 0, so the weights are exactly 0.
    assert (out.weights == 0).all()


def test_ragged_lengths_ignore_slots_past_the_end():
    scores = torch.tensor([[0.1, 0.2, 0.9, 0.95]])
    q, k, v, w = _inputs_with_scores(scores)
    out = sparse_attention_reference(q, k, v, w, 1, lengths=torch.tensor([2]))
    assert out.indices.tolist() == [[1]]  # slots 2 and 3 do not exist


def test_nan_score_ranks_first_and_poisons_its_row_only():
    scores = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3, 0.4]])
    q, k, v, w = _inputs_with_scores(scores)
    k[0, 1, 0] = float("nan")
    out = sparse_attention_reference(q, k, v, w, 2)
    assert out.indices[0, 0] == 1
    assert torch.isnan(out.weights[0]).all() and torch.isnan(out.summary[0]).all()
    assert torch.isfinite(out.weights[1]).all() and torch.isfinite(out.summary[1]).all()


@pytest.mark.parametrize("k_top", [1, 3, 6, 10])
@pytest.mark.parametrize("lengths", [None, [6, 0, 1, 4]])
def test_gradcheck_float64(k_top, lengths):
    case = Case(4, 6, 3, 2, k_top)
    q, k, v, w, _ = make_inputs(case, torch.float64, seed=k_top)
    lengths = None if lengths is None else torch.tensor(lengths)
    leaves = [t.requires_grad_(True) for t in (q, k, v, w)]
    assert torch.autograd.gradcheck(lambda *a: sparse_attention_reference(*a, k_top, lengths)[:2], leaves)


def test_scores_match_the_mlp_on_the_concatenation():
    """s_i = w . tanh(W [h; m_i] + b) with W = [W_h, W_m]: the split form is the MLP on the concatenation."""
    g = torch.Generator().manual_seed(0)
    B, T, Hd, D = 2, 5, 4, 3
    h, m = torch.randn(B, Hd, generator=g), torch.randn(B, T, Hd, generator=g)
    W, b, w = torch.randn(D, 2 * Hd, generator=g), torch.randn(D, generator=g), torch.randn(D, generator=g)
    concat = torch.cat([h[:, None].expand(-1, T, -1), m], -1)
    direct = torch.tanh(concat @ W.t() + b) @ w
    split = raw_scores(h @ W[:, :Hd].t() + b, m @ W[:, Hd:].t(), w)
    torch.testing.assert_close(split, direct)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", case_params(SMALL_CASES))
def test_written_out_backward_matches_autograd(case, dtype):
    check_backend("reference", case, dtype)


def test_written_out_backward_is_exactly_sparse():
    case = Case(3, 50, 8, 6, 4)
    q, k, v, w, _ = make_inputs(case, torch.float64)
    L = torch.full((3,), 50)
    summary, weights, indices, threshold = reference_forward(q, k, v, w, 4, L)
    grads = reference_backward(torch.ones_like(summary), torch.ones_like(weights), q, k, v, w, 4, L, indices, threshold)
    assert ((grads[1] != 0).any(-1).sum(1) <= 5).all() and ((grads[2] != 0).any(-1).sum(1) <= 4).all()


@pytest.mark.parametrize("k_top", [3, 12], ids=["sparse-rows", "softmax-rows"])
@pytest.mark.parametrize("backend", ["autograd", "reference", "cpu"])
def test_padding_is_invisible(backend, k_top):
    """NaN / +-inf in padding slots (i >= lengths[b], rows of length 0 included) change no output and no
    gradient: through autograd of the reference (the oracle), the reference backend's written-out backward
    and the C++ backend. (The Triton backend: tests/test_triton.py.)"""
    run = sparse_attention_reference if backend == "autograd" else functools.partial(_op, backend=backend)
    for dtype in (torch.float64, torch.float32):
        check_padding_invisible(run, k_top, dtype)


def _op(q, k, v, w, k_top, lengths, backend):
    return sparse_attention(q, k, v, w, k_top, lengths=lengths, backend=backend)
