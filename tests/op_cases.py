"""Shared inputs, tolerances and the comparison every backend's tests run against the reference.

Each backend's test file parametrises `check_backend` over these cases, so the Triton and C++ kernels are
held to exactly the same standard.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from sab_kernels import sparse_attention, sparse_attention_reference
from sab_kernels.testing import BACKWARD_TOL, FORWARD_TOL  # noqa: F401 - re-exported for the tests


@dataclasses.dataclass(frozen=True)
class Case:
    B: int
    T: int
    D: int
    H: int
    k_top: int
    lengths: str = "full"  # full | ragged (includes 0 and T) | zero
    ties: bool = False  # duplicate key rows, so equal scores must break to the lower index
    noncontig: bool = False

    @property
    def id(self) -> str:
        extra = [self.lengths] + (["ties"] if self.ties else []) + (["noncontig"] if self.noncontig else [])
        return f"B{self.B}-T{self.T}-D{self.D}-H{self.H}-k{self.k_top}-" + "-".join(extra)


def make_inputs(case: Case, dtype: torch.dtype, device="cpu", seed: int = 0):
    """query (B, D), keys (B, T, D), values (B, T, H), score_weight (D,), lengths (B,) or None."""
    g = torch.Generator().manual_seed(seed)
    B, T, D, H = case.B, case.T, case.D, case.H
    query = torch.randn(B, D, generator=g)
    keys = torch.randn(B, T, D, generator=g)
    values = torch.randn(B, T, H, generator=g)
    score_weight = torch.randn(D, generator=g)
    if case.ties:  # every slot i copies slot i % 3: triples of exactly equal scores
        keys = keys[:, torch.arange(T) % 3]
    if case.noncontig:  # transposed storage: same values, non-contiguous strides
        keys = keys.transpose(1, 2).contiguous().transpose(1, 2)
        values = values.transpose(1, 2).contiguous().transpose(1, 2)
        query = query.t().contiguous().t()
    tensors = [t.to(device=device, dtype=dtype) for t in (query, keys, values, score_weight)]
    if case.lengths == "full":
        lengths = None
    elif case.lengths == "zero":
        lengths = torch.zeros(B, dtype=torch.int64)
    else:  # ragged: 0, T, and values around k_top
        choices = torch.tensor([0, T, min(case.k_top, T), min(case.k_top + 1, T), max(T // 2, 1), 1])
        lengths = choices[torch.arange(B) % len(choices)]
    if lengths is not None:
        lengths = lengths.to(device)
    return (*tensors, lengths)


def assert_close(actual, expected, tol, name):
    atol, rtol = tol
    torch.testing.assert_close(actual.float().cpu(), expected.float().cpu(), atol=atol, rtol=rtol, msg=lambda m: f"{name}: {m}")


def check_backend(backend: str, case: Case, dtype: torch.dtype, device="cpu", seed: int = 0):
    """Forward and backward of `backend` against the reference, plus the sparsity of the gradient."""
    query, keys, values, score_weight, lengths = make_inputs(case, dtype, device, seed)
    leaves = [t.detach().requires_grad_(True) for t in (query, keys, values, score_weight)]
    ref_leaves = [t.detach().requires_grad_(True) for t in (query, keys, values, score_weight)]

    out = sparse_attention(*leaves, case.k_top, lengths=lengths, backend=backend)
    ref = sparse_attention_reference(*ref_leaves, case.k_top, lengths=lengths)

    assert out.summary.dtype == dtype and out.weights.dtype == dtype and out.indices.dtype == torch.int64
    assert torch.equal(out.indices.cpu(), ref.indices.cpu()), f"indices differ:\n{out.indices}\n{ref.indices}"
    assert_close(out.weights, ref.weights, FORWARD_TOL[dtype], "weights")
    assert_close(out.summary, ref.summary, FORWARD_TOL[dtype], "summary")

    g = torch.Generator().manual_seed(seed + 1)
    grad_summary = torch.randn(out.summary.shape, generator=g).to(device=device, dtype=dtype)
    grad_weights = torch.randn(out.weights.shape, generator=g).to(device=device, dtype=dtype)
    grads = torch.autograd.grad((out.summary, out.weights), leaves, (grad_summary, grad_weights))
    ref_grads = torch.autograd.grad((ref.summary, ref.weights), ref_leaves, (grad_summary, grad_weights))
    for name, gr, rg in zip(("query", "keys", "values", "score_weight"), grads, ref_grads):
        assert gr.shape == rg.shape and gr.dtype == dtype
        assert_close(gr, rg, BACKWARD_TOL[dtype], f"grad_{name}")

    # Sparsity: rows outside the selected and threshold slots get exactly zero gradient.
    B, T = keys.shape[:2]
    touched = torch.zeros(B, T, dtype=torch.bool)
    idx = out.indices.cpu()
    for b in range(B):
        touched[b, idx[b][idx[b] >= 0]] = True
    grad_keys, grad_values = grads[1].cpu(), grads[2].cpu()
    assert (grad_values[~touched] == 0).all(), "grad_values is non-zero outside the selected rows"
    key_rows_nonzero = (grad_keys != 0).any(-1)
    assert (key_rows_nonzero.sum(1) <= torch.clamp((idx >= 0).sum(1) + 1, max=T)).all()
    return out, grads


# Shapes shared by every backend: odd sizes, T < k_top, T = k_top, T = k_top + 1, ragged, ties, strides.
SMALL_CASES = [
    Case(1, 1, 1, 1, 1),
    Case(3, 5, 7, 9, 8),  # T < k_top: softmax over all
    Case(2, 8, 5, 3, 8),  # T = k_top
    Case(2, 9, 5, 3, 8),  # T = k_top + 1
    Case(5, 37, 13, 11, 4),
    Case(6, 33, 17, 19, 5, lengths="ragged"),
    Case(3, 12, 6, 5, 3, lengths="zero"),
    Case(4, 21, 8, 6, 4, ties=True),
    Case(3, 24, 9, 7, 6, noncontig=True),
    Case(2, 64, 16, 16, 32),
    Case(3, 40, 12, 10, 1, lengths="ragged"),
]
DTYPES = [
    pytest.param(torch.float32, id="fp32"),
    pytest.param(torch.float64, id="fp64"),
    pytest.param(torch.float16, id="fp16"),
    pytest.param(torch.bfloat16, id="bf16"),
]


def case_params(cases):
    return [pytest.param(c, id=c.id) for c in cases]


PADDING_LENGTHS = [0, 1, 3, 4, 7, 12]  # empty, one slot, = k_top, k_top + 1, part, full (T = 12, k_top = 3)


def check_padding_invisible(run, k_top: int, dtype=torch.float64, device="cpu", seed: int = 0):
    """Padding (slots i >= lengths[b]) changes no output and no gradient: NaN / +-inf stored there give
    bitwise the outputs and gradients of zeros stored there, every gradient is finite and padding rows get
    exactly zero. `run(query, keys, values, score_weight, k_top, lengths)` -> (summary, weights, indices)."""
    B, T, D, H = len(PADDING_LENGTHS), 12, 5, 4
    g = torch.Generator().manual_seed(seed)
    clean = [torch.randn(*s, generator=g).to(device=device, dtype=dtype) for s in ((B, D), (B, T, D), (B, T, H), (D,))]
    lengths = torch.tensor(PADDING_LENGTHS, device=device)
    pad = (torch.arange(T, device=device) >= lengths[:, None])[:, :, None]  # (B, T, 1)
    junk = torch.tensor([float("nan"), float("inf"), -float("inf")], dtype=dtype, device=device)
    fill_k = junk[torch.arange(B * T * D, device=device) % 3].reshape(B, T, D)
    fill_v = junk[torch.arange(B * T * H, device=device) % 3].reshape(B, T, H)
    dirty = [clean[0], torch.where(pad, fill_k, clean[1]), torch.where(pad, fill_v, clean[2]), clean[3]]
    zeroed = [clean[0], torch.where(pad, 0, clean[1]), torch.where(pad, 0, clean[2]), clean[3]]
    grad_summary = torch.randn(B, H, generator=g).to(device=device, dtype=dtype)
    grad_weights = torch.randn(B, min(k_top, T), generator=g).to(device=device, dtype=dtype)
    results = []
    for inputs in (dirty, zeroed):
        leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
        out = run(*leaves, k_top, lengths)
        grads = torch.autograd.grad((out[0], out[1]), leaves, (grad_summary, grad_weights))
        results.append((out, grads))
    (out, grads), (out0, grads0) = results
    for name, a, b in zip(("summary", "weights", "indices"), out[:3], out0[:3]):
        assert torch.equal(a, b), f"{name} depends on what padding holds:\n{a}\n{b}"
    for name, a, b in zip(("query", "keys", "values", "score_weight"), grads, grads0):
        assert torch.isfinite(a).all(), f"grad_{name} is not finite with NaN/inf in padding:\n{a}"
        assert torch.equal(a, b), f"grad_{name} depends on what padding holds"
    assert (grads[1].cpu()[pad.cpu().expand(-1, -1, D)] == 0).all() and (grads[2].cpu()[pad.cpu().expand(-1, -1, H)] == 0).all()
    return out, grads
