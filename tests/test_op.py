"""The public op: input errors, torch.library registration, torch.compile, determinism, edge cases."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from op_cases import BACKWARD_TOL, FORWARD_TOL, Case, assert_close, check_backend, make_inputs
import sab_kernels
from sab_kernels import SparseAttentionOutput, sparse_attention

B, T, D, H = 2, 6, 4, 3


def _good():
    return make_inputs(Case(B, T, D, H, 2), torch.float32)[:4]


def _call(**overrides):
    q, k, v, w = _good()
    args = dict(query=q, keys=k, values=v, score_weight=w, k_top=2)
    args.update(overrides)
    kw = {name: args.pop(name) for name in ("lengths", "backend") if name in args}
    return sparse_attention(args["query"], args["keys"], args["values"], args["score_weight"], args["k_top"], **kw)


@pytest.mark.parametrize(
    "overrides, exc, names",
    [
        pytest.param(dict(query=torch.randn(B, D, 1)), ValueError, "query", id="query-rank"),
        pytest.param(dict(keys=torch.randn(B, T)), ValueError, "keys", id="keys-rank"),
        pytest.param(dict(values=torch.randn(B, T)), ValueError, "values", id="values-rank"),
        pytest.param(dict(score_weight=torch.randn(D, 1)), ValueError, "score_weight", id="w-rank"),
        pytest.param(dict(keys=torch.randn(B + 1, T, D)), ValueError, "keys", id="keys-B"),
        pytest.param(dict(keys=torch.randn(B, T, D + 1)), ValueError, "keys", id="keys-D"),
        pytest.param(dict(values=torch.randn(B, T + 1, H)), ValueError, "values", id="values-T"),
        pytest.param(dict(values=torch.randn(B + 1, T, H)), ValueError, "values", id="values-B"),
        pytest.param(dict(score_weight=torch.randn(D + 2)), ValueError, "score_weight", id="w-D"),
        pytest.param(dict(keys=torch.randn(B, 0, D), values=torch.randn(B, 0, H)), ValueError, "keys", id="T0"),
        pytest.param(dict(k_top=0), ValueError, "k_top", id="k_top-0"),
        pytest.param(dict(k_top=-3), ValueError, "k_top", id="k_top-neg"),
        pytest.param(dict(k_top=2.0), TypeError, "k_top", id="k_top-float"),
        pytest.param(dict(k_top=True), TypeError, "k_top", id="k_top-bool"),
        pytest.param(dict(lengths=torch.tensor([1, T + 1])), ValueError, "lengths", id="lengths-over"),
        pytest.param(dict(lengths=torch.tensor([-1, 2])), ValueError, "lengths", id="lengths-neg"),
        pytest.param(dict(lengths=torch.tensor([1, 2, 3])), ValueError, "lengths", id="lengths-shape"),
        pytest.param(dict(lengths=torch.tensor([1.0, 2.0])), TypeError, "lengths", id="lengths-float"),
        pytest.param(dict(lengths=[1, 2]), TypeError, "lengths", id="lengths-list"),
        pytest.param(dict(keys=torch.randn(B, T, D, dtype=torch.float64)), TypeError, "keys", id="mixed-dtype"),
        pytest.param(dict(query=torch.ones(B, D, dtype=torch.int64)), TypeError, "query", id="int-query"),
        pytest.param(dict(values=torch.ones(B, T, H, dtype=torch.int32)), TypeError, "values", id="int-values"),
        pytest.param(dict(query=[[0.0] * D] * B), TypeError, "query", id="query-list"),
        pytest.param(dict(backend="cuda"), ValueError, "backend", id="bad-backend"),
    ],
)
def test_bad_input_raises_naming_the_argument(overrides, exc, names):
    with pytest.raises(exc, match=names):
        _call(**overrides)


def test_mixed_devices_are_rejected():
    q, k, v, w = _good()
    with pytest.raises(ValueError, match="values"):
        sparse_attention(q, k, v.to("meta"), w, 2)


def test_returns_named_tuple():
    out = _call(backend="reference")
    assert isinstance(out, SparseAttentionOutput)
    assert out.summary.shape == (B, H) and out.weights.shape == (B, 2) and out.indices.shape == (B, 2)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_opcheck(backend):
    q, k, v, w, L = make_inputs(Case(3, 9, 5, 4, 3, lengths="ragged"), torch.float64)
    leaves = [t.requires_grad_(True) for t in (q, k, v, w)]
    torch.library.opcheck(torch.ops.sab.sparse_attention_forward.default, (*leaves, 3, L.long(), backend))


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_torch_compile_fullgraph_matches_eager(backend):
    q, k, v, w, L = make_inputs(Case(3, 9, 5, 4, 3, lengths="ragged"), torch.float32)
    leaves = [t.requires_grad_(True) for t in (q, k, v, w)]

    def loss(q, k, v, w):
        out = sparse_attention(q, k, v, w, 3, lengths=L, backend=backend)
        return (out.summary.square().sum() + out.weights.sum()), out.indices

    compiled = torch.compile(loss, fullgraph=True)
    (l_eager, i_eager), (l_comp, i_comp) = loss(*leaves), compiled(*leaves)
    assert torch.equal(i_eager, i_comp)
    torch.testing.assert_close(l_comp, l_eager)
    g_eager = torch.autograd.grad(l_eager, leaves)
    g_comp = torch.autograd.grad(l_comp, leaves)
    for a, b in zip(g_comp, g_eager):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_deterministic_bitwise(backend):
    case = Case(4, 300, 16, 12, 8, ties=True)
    runs = [check_backend(backend, case, torch.float32, seed=3) for _ in range(2)]
    (o1, g1), (o2, g2) = runs
    for a, b in zip((*o1, *g1), (*o2, *g2)):
        assert torch.equal(a, b)


def test_empty_batch():
    q, k, v, w = (t[:0] if t.dim() > 1 else t for t in _good())
    out = sparse_attention(q, k, v, w, 2, backend="reference")
    assert out.summary.shape == (0, H) and out.indices.shape == (0, 2)


def test_lengths_of_any_integer_dtype():
    a = _call(lengths=torch.tensor([3, 6], dtype=torch.int32), backend="reference")
    b = _call(lengths=torch.tensor([3, 6], dtype=torch.int64), backend="reference")
    assert torch.equal(a.indices, b.indices) and torch.equal(a.summary, b.summary)


@settings(max_examples=40, deadline=None)
@given(
    B=st.integers(1, 4),
    T=st.integers(1, 40),
    D=st.integers(1, 9),
    H=st.integers(1, 9),
    k_top=st.integers(1, 12),
    ragged=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_hypothesis_reference_backend_matches_autograd(B, T, D, H, k_top, ragged, seed):
    check_backend("reference", Case(B, T, D, H, k_top, lengths="ragged" if ragged else "full"), torch.float64, seed=seed)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_eager_path_equals_the_custom_op_bitwise(backend):
    """Eager calls skip the dispatcher (autograd.Function); traced calls use sab::sparse_attention_forward."""
    q, k, v, w, L = make_inputs(Case(5, 30, 7, 6, 4, lengths="ragged"), torch.float32)
    leaves = [t.requires_grad_(True) for t in (q, k, v, w)]
    eager = sparse_attention(*leaves, 4, lengths=L, backend=backend)
    op = torch.ops.sab.sparse_attention_forward(*leaves, 4, L.long(), backend)
    for a, b in zip(eager, op[:3]):
        assert torch.equal(a, b)
    g_eager = torch.autograd.grad((eager.summary.sum() + eager.weights.square().sum()), leaves)
    g_op = torch.autograd.grad((op[0].sum() + op[1].square().sum()), leaves)
    for a, b in zip(g_eager, g_op):
        assert torch.equal(a, b)


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
def test_huge_k_top_is_dense_attention(backend):
    """k_top far above T (dense attention, as SABLSTM(k_top=None) uses) equals k_top = T: softmax rows."""
    q, k, v, w, L = make_inputs(Case(3, 7, 5, 4, 7, lengths="ragged"), torch.float32)
    huge = sparse_attention(q, k, v, w, 2**31 - 1, lengths=L, backend=backend)
    exact = sparse_attention(q, k, v, w, 7, lengths=L, backend=backend)
    for a, b in zip(huge, exact):
        assert torch.equal(a, b)
