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
        pytest.param(dict(query=torch.randn(B, D).to_sparse()), TypeError, "query.*strided", id="sparse-query"),
        pytest.param(dict(keys=torch.randn(B, T, D).to_sparse()), TypeError, "keys.*strided", id="sparse-keys"),
        pytest.param(dict(values=torch.randn(B, T, H).to_sparse()), TypeError, "values.*strided", id="sparse-values"),
        pytest.param(dict(score_weight=torch.randn(D).to_sparse()), TypeError, "score_weight.*strided", id="sparse-w"),
        pytest.param(dict(lengths=torch.tensor([1, 2]).to_sparse()), TypeError, "lengths.*strided", id="sparse-lengths"),
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
    torch.library.opcheck(torch.ops.sab.sparse_attention_forward.default, (*leaves, 3, L.long(), backend, 0.3))


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


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
def test_empty_batch_gives_empty_outputs_and_zero_gradients(backend):
    """B = 0: every gradient is a defined zero, score_weight's (D,) one included (it was uninitialised memory)."""
    q, k, v, w = (t[:0] if t.dim() > 1 else t for t in make_inputs(Case(B, T, 64, H, 2), torch.float32)[:4])
    leaves = [t.detach().requires_grad_(True) for t in (q, k, v, w)]
    out = sparse_attention(*leaves, 2, backend=backend)
    assert out.summary.shape == (0, H) and out.weights.shape == (0, 2) and out.indices.shape == (0, 2)
    # Leave NaN in freed memory of w's size, so an uninitialised gradient would show up as NaN.
    poison = torch.full_like(w, float("nan"))
    del poison
    grads = torch.autograd.grad(out.summary.sum() + out.weights.sum(), leaves)
    for leaf, g in zip(leaves, grads):
        assert g.shape == leaf.shape and torch.equal(g, torch.zeros_like(leaf))


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
def test_empty_batch_through_the_memory_module(backend):
    from sab_kernels.nn import SparseAttentiveMemory

    torch.manual_seed(0)
    mem = SparseAttentiveMemory(hidden_size=H, attn_dim=64, k_top=2, backend=backend)
    state = mem.start(torch.zeros(0, 1, H))
    mem.append(state, torch.randn(0, H))
    h_hat = torch.randn(0, H, requires_grad=True)
    poison = torch.full((64,), float("nan"))
    del poison
    out = mem.attend(state, h_hat)
    (out.summary.sum() + out.weights.sum()).backward()
    for name, p in mem.named_parameters():
        assert p.grad is not None and torch.equal(p.grad, torch.zeros_like(p)), name


def _double_backward_inputs():
    """float64 inputs with rows of 0 slots, 1 slot, n <= k_top (softmax) and n > k_top (sparse)."""
    q, k, v, w, _ = make_inputs(Case(4, 5, 3, 2, 2), torch.float64, seed=4)
    return [t.requires_grad_(True) for t in (q, k, v, w)], torch.tensor([0, 1, 2, 5])


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
def test_double_backward_gradgradcheck(backend):
    """create_graph=True gives differentiable gradients on every backend, and their derivatives are right."""
    leaves, L = _double_backward_inputs()

    def f(q, k, v, w):
        out = sparse_attention(q, k, v, w, 2, lengths=L, backend=backend)
        return out.summary, out.weights

    # fast_mode (random projections) for the interpreted Triton forward, which costs ~0.1 s per call here.
    assert torch.autograd.gradgradcheck(f, leaves, fast_mode=backend == "triton")


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
def test_gradient_penalty_matches_the_reference(backend):
    """A gradient penalty's derivative (it came back silently zero on cpu and triton) equals the reference's,
    and the create_graph first derivatives equal the plain backward's."""
    leaves, L = _double_backward_inputs()

    def penalty_grads(backend):
        out = sparse_attention(*leaves, 2, lengths=L, backend=backend)
        loss = out.summary.square().sum() + out.weights.sum()
        plain = torch.autograd.grad(loss, leaves, retain_graph=True)
        first = torch.autograd.grad(loss, leaves, create_graph=True)
        for a, b in zip(first, plain):
            torch.testing.assert_close(a, b)
        assert all(g.requires_grad for g in first)
        return torch.autograd.grad(sum(g.square().sum() for g in first), leaves)

    got, want = penalty_grads(backend), penalty_grads("reference")
    assert any(g.abs().sum() > 0 for g in want)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_double_backward_through_the_custom_op(backend):
    """The traced path (sab::sparse_attention_forward) gives the same second derivatives as the eager one."""
    leaves, L = _double_backward_inputs()

    def second(fn):
        summary = fn()
        (g_q,) = torch.autograd.grad(summary.square().sum(), leaves[:1], create_graph=True)
        return torch.autograd.grad(g_q.square().sum(), leaves)

    eager = second(lambda: sparse_attention(*leaves, 2, lengths=L, backend=backend).summary)
    op = second(lambda: torch.ops.sab.sparse_attention_forward(*leaves, 2, L, backend)[0])
    for a, b in zip(eager, op):
        torch.testing.assert_close(a, b)


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


def test_version_has_one_source():
    """sab_kernels.__version__, the installed metadata (pyproject's dynamic version) and _version.py agree."""
    from importlib.metadata import version

    from sab_kernels import _version

    assert sab_kernels.__version__ == _version.__version__ == version("sab-kernels")
