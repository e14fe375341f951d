"""The verifier: every implementation is checked against the eager reference before it is timed.

One forward and one backward on the very inputs that will be timed, with a fixed random upstream gradient
on both outputs (summary and weights). Checked: `indices` exactly, `summary` and `weights`, then the
gradients of query, keys, values and score_weight, each with `torch.allclose`-style tolerances per dtype
(the same tolerances as the test suite); a gradient outside them still passes if its relative RMS error is
small (GRAD_REL_RMS: ill-conditioned gradients such as k_top = 1's). An implementation that fails is
reported as FAIL and not timed.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, List, Optional, Sequence

import torch

from ..testing import BACKWARD_TOL, FORWARD_TOL  # the test suite's tolerances

# A gradient that misses the elementwise tolerance still passes when its relative RMS error
# ||actual - expected|| / ||expected|| is below this: with k_top = 1 the weight is r / (r + 1e-7), so close
# to 1 that its gradient is a cancellation, and every float32 implementation (the eager reference included)
# carries about 0.1-1% relative error there. Wrong gradients (a missing row, a wrong factor) are far off.
GRAD_REL_RMS = {torch.float64: 1e-8, torch.float32: 1e-2, torch.float16: 2e-2, torch.bfloat16: 5e-2}
GRAD_NAMES = ("query", "keys", "values", "score_weight")


@dataclasses.dataclass
class Result:
    """Outputs and input gradients of one forward + backward."""

    summary: torch.Tensor
    weights: torch.Tensor
    indices: torch.Tensor
    grads: List[torch.Tensor]


@dataclasses.dataclass
class Verdict:
    ok: bool
    message: str  # "ok" or what failed first, with the numbers
    max_error: float = 0.0  # largest |actual - expected| / (atol + rtol |expected|) over everything checked


def run_once(fn: Callable, inputs: Sequence[torch.Tensor], k_top: int, seed: int = 2) -> Result:
    """fn(query, keys, values, score_weight, k_top) forward, then backward of a fixed random loss."""
    leaves = [t.detach().requires_grad_(True) for t in inputs]  # shares storage: nothing writes into inputs
    out = fn(*leaves, k_top)
    summary, weights, indices = out[0], out[1], out[2]
    g = torch.Generator().manual_seed(seed)
    g_summary = torch.randn(summary.shape, generator=g).to(summary)
    g_weights = torch.randn(weights.shape, generator=g).to(weights)
    torch.autograd.backward([summary, weights], [g_summary, g_weights])
    grads = [leaf.grad if leaf.grad is not None else torch.zeros_like(leaf) for leaf in leaves]
    return Result(summary.detach(), weights.detach(), indices.detach(), [g.detach() for g in grads])


def reference_result(inputs: Sequence[torch.Tensor], k_top: int) -> Result:
    from ..reference import sparse_attention_reference

    return run_once(sparse_attention_reference, inputs, k_top)


def _excess(actual: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float) -> float:
    """max |a - e| / (atol + rtol |e|): at most 1 is within tolerance. NaN in the same places is equal."""
    a, e = actual.double(), expected.double()
    if a.shape != e.shape:
        return float("inf")
    both_nan = torch.isnan(a) & torch.isnan(e)
    ratio = (a - e).abs() / (atol + rtol * e.abs())
    ratio = torch.where(both_nan, torch.zeros_like(ratio), ratio)
    return float(ratio.nan_to_num(nan=float("inf")).max()) if ratio.numel() else 0.0


def _rel_rms(actual: torch.Tensor, expected: torch.Tensor) -> float:
    a, e = actual.double(), expected.double()
    if a.shape != e.shape or not torch.isfinite(a).all() or not torch.isfinite(e).all():
        return float("inf")
    norm = e.norm().item()
    return (a - e).norm().item() / norm if norm > 0 else (0.0 if a.norm().item() == 0 else float("inf"))


def compare(actual: Result, expected: Result, dtype: torch.dtype) -> Verdict:
    """Check `actual` against `expected` (the reference's result) with the tolerances of `dtype`."""
    if actual.indices.shape != expected.indices.shape or not torch.equal(actual.indices.cpu(), expected.indices.cpu()):
        differ = (actual.indices.cpu() != expected.indices.cpu()).any(1).sum().item() if actual.indices.shape == expected.indices.shape else "all"
        return Verdict(False, f"indices differ from the reference in {differ} row(s)", float("inf"))
    worst = 0.0
    checks = [("summary", actual.summary, expected.summary, FORWARD_TOL[dtype]),
              ("weights", actual.weights, expected.weights, FORWARD_TOL[dtype])]
    checks += [(f"grad {n}", a, e, BACKWARD_TOL[dtype]) for n, a, e in zip(GRAD_NAMES, actual.grads, expected.grads)]
    for name, a, e, (atol, rtol) in checks:
        excess = _excess(a, e, atol, rtol)
        if not excess <= 1.0 and name.startswith("grad") and _rel_rms(a, e) <= GRAD_REL_RMS[dtype]:
            excess = 1.0  # ill-conditioned but within the relative RMS bound (see GRAD_REL_RMS)
        worst = max(worst, excess)
        if not excess <= 1.0:
            diff = (a.double() - e.double()).abs().max().item() if a.shape == e.shape else float("nan")
            return Verdict(False, f"{name}: max |diff| {diff:.3g} exceeds atol={atol:g}, rtol={rtol:g} ({excess:.3g}x)", excess)
    return Verdict(True, "ok", worst)


def verify(fn: Callable, inputs: Sequence[torch.Tensor], k_top: int, expected: Optional[Result] = None) -> Verdict:
    """Run `fn` forward and backward on `inputs` and compare with the reference (computed unless given)."""
    if expected is None:
        expected = reference_result(inputs, k_top)
    try:
        actual = run_once(fn, inputs, k_top)
    except Exception as exc:  # noqa: BLE001 - a crashing implementation is a failed one
        return Verdict(False, f"raised {type(exc).__name__}: {exc}", float("inf"))
    return compare(actual, expected, inputs[0].dtype)
