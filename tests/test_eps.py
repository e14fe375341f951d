"""The sparsifier's epsilon as an option: a = relu(s - tau) / (sum relu + eps), default 1e-7 (the paper's).

Every backend and the SAB-LSTM's two paths honour a non-default eps exactly as the reference does, the
default is unchanged, and a bad eps is refused by name.
"""

import pytest
import torch

from op_cases import Case, make_inputs
from sab_kernels import sparse_attention, sparse_attention_reference
from sab_kernels.nn import SABLSTM
from sab_kernels.testing import BACKWARD_TOL, FORWARD_TOL


def _run(fn, leaves):
    leaves = [t.detach().requires_grad_(True) for t in leaves]
    out = fn(*leaves)
    g = torch.Generator().manual_seed(1)
    (out.summary * torch.randn(out.summary.shape, generator=g, dtype=out.summary.dtype)).sum().backward()
    return out, [t.grad for t in leaves]


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_every_backend_honours_eps(backend, dtype):
    q, k, v, w, lengths = make_inputs(Case(3, 11, 6, 5, 3, "ragged"), dtype, seed=2)
    eps = 0.25
    out, grads = _run(lambda *t: sparse_attention(*t, 3, lengths=lengths, backend=backend, eps=eps), (q, k, v, w))
    ref, ref_grads = _run(lambda *t: sparse_attention_reference(*t, 3, lengths, eps=eps), (q, k, v, w))
    (fa, fr), (ga, gr) = FORWARD_TOL[dtype], BACKWARD_TOL[dtype]
    torch.testing.assert_close(out.weights, ref.weights, atol=fa, rtol=fr)
    torch.testing.assert_close(out.summary, ref.summary, atol=fa, rtol=fr)
    assert torch.equal(out.indices, ref.indices)
    for name, a, b in zip(("query", "keys", "values", "score_weight"), grads, ref_grads):
        torch.testing.assert_close(a, b, atol=ga, rtol=gr, msg=name)
    # and it matters: the paper's eps gives other weights on the same inputs
    default = sparse_attention(q, k, v, w, 3, lengths=lengths, backend=backend)
    assert (default.weights - out.weights).abs().max() > 1e-3


def test_the_default_is_the_papers():
    q, k, v, w, _ = make_inputs(Case(2, 9, 4, 3, 2), torch.float64, seed=3)
    for backend in ("reference", "cpu"):
        assert torch.equal(sparse_attention(q, k, v, w, 2, backend=backend).weights,
                           sparse_attention(q, k, v, w, 2, backend=backend, eps=1e-7).weights)


@pytest.mark.parametrize("eps, error", [(0.0, ValueError), (-1.0, ValueError), (float("nan"), ValueError),
                                        (float("inf"), ValueError), ("0.1", TypeError), (True, TypeError)])
def test_a_bad_eps_is_refused_by_name(eps, error):
    q, k, v, w, _ = make_inputs(Case(2, 9, 4, 3, 2), torch.float32)
    with pytest.raises(error, match="eps"):
        sparse_attention(q, k, v, w, 2, backend="reference", eps=eps)
    with pytest.raises(error, match="eps"):
        SABLSTM(3, 4, eps=eps)


def test_both_sab_lstm_paths_honour_eps():
    x = torch.randn(15, 2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    results = []
    for path in ("fused", "step"):
        torch.manual_seed(0)
        core = SABLSTM(3, 6, 2, 1, 3, attn_dim=5, backend="cpu", path=path, eps=0.5).double()
        out, _ = core(x)
        out.square().sum().backward()
        results.append([out.detach()] + [p.grad.clone() for p in core.parameters()])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)
    torch.manual_seed(0)
    paper = SABLSTM(3, 6, 2, 1, 3, attn_dim=5, backend="cpu").double()
    assert (paper(x)[0].detach() - results[0][0]).abs().max() > 1e-6
