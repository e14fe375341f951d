"""The runner: verify, then time and measure memory, for every (case, implementation, mode).

Every result is a flat dict (one CSV row); `report.py` turns the rows into tables and plots.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional, Sequence

import torch

from . import timing
from .memory import MemoryMeter
from .registry import Impl, OpCase
from .verify import Verdict, reference_result, verify

COLUMNS = [
    "section", "sweep", "case", "B", "T", "D", "H", "k_top", "dtype", "mode", "impl", "impl_label", "status",
    "median_ms", "p25_ms", "p75_ms", "reps", "peak_mem_mib", "min_bytes", "bandwidth_frac", "verify_max_error", "note",
]


def _row(**kw) -> Dict:
    row = {c: "" for c in COLUMNS}
    row.update(kw)
    return row


def mode_callables(impl: Impl, inputs: Sequence[torch.Tensor], k_top: int, mode: str, grad_summary: torch.Tensor):
    """(fn, setup, leaves) for one mode. forward: fn() runs the forward with inputs that require grad (a
    training forward). fwd+bwd: forward, then backward of dL/dsummary. backward: setup() runs the
    forward untimed, fn(out) the backward alone."""
    leaves = [t.detach().requires_grad_(True) for t in inputs]
    if mode == "forward":
        return (lambda: impl.fn(*leaves, k_top)), None, leaves
    if mode == "fwd+bwd":
        def fwd_bwd():
            impl.fn(*leaves, k_top)[0].backward(grad_summary)

        return fwd_bwd, None, leaves
    if mode == "backward":
        return (lambda summary: summary.backward(grad_summary)), (lambda: impl.fn(*leaves, k_top)[0]), leaves
    raise ValueError(f"unknown mode {mode!r}")


def min_bytes(case: OpCase, mode: str) -> int:
    """Bytes the op must move at least. Forward: read query, w and every key once, read the k_top selected
    value rows, write summary, weights and indices. Backward: read dL/dsummary, query, w, the k_top + 1 key
    rows and k_top value rows it recomputes from, write grad query and w, and write the dense (B, T, D) and
    (B, T, H) gradients of keys and values (zero outside the selected rows, but they are dense tensors)."""
    e = torch.empty((), dtype=case.torch_dtype).element_size()
    B, T, D, H, k = case.B, case.T, case.D, case.H, min(case.k_top, case.T)
    fwd = e * (B * D + D + B * T * D + B * k * H + B * H + B * k) + 8 * B * k
    bwd = e * (B * H + B * D + D + B * (k + 1) * D + B * k * H + B * D + D + B * T * D + B * T * H) + 8 * B * k
    return {"forward": fwd, "backward": bwd, "fwd+bwd": fwd + bwd}[mode]


class SkipTracker:
    """Skip an implementation at larger sizes of a sweep once one call of it took longer than `limit_s`."""

    def __init__(self, limit_s: float):
        self.limit_s = limit_s
        self.slow: Dict[tuple, str] = {}

    def key(self, case: OpCase, impl: Impl, mode: str):
        return (case.sweep, impl.name, mode)

    def skipped(self, case: OpCase, impl: Impl, mode: str) -> Optional[str]:
        return self.slow.get(self.key(case, impl, mode))

    def record(self, case: OpCase, impl: Impl, mode: str, median_ms: float):
        if median_ms / 1e3 > self.limit_s:
            self.slow[self.key(case, impl, mode)] = f"skipped: {median_ms / 1e3:.1f} s per call at {case.label}"


def run_op(
    cases: Sequence[OpCase],
    impls: Sequence[Impl],
    device: str,
    cfg: timing.TimingConfig,
    peak_bandwidth: Optional[float] = None,
    limit_s: float = 20.0,
    progress: Optional[Callable[[str], None]] = None,
    memory=None,
) -> List[Dict]:
    """Rows for the op section. Sizes shared by several sweeps are measured once and reported in each.

    `memory`: a `memory.MemoryMeter` (default: in process, no worker)."""
    memory = memory or MemoryMeter(device, use_worker=False)
    rows: List[Dict] = []
    done: Dict[tuple, Dict] = {}
    skips = SkipTracker(limit_s)
    tick = progress or (lambda _desc: None)
    for case in cases:
        inputs = expected = failure = None  # made on first use, so cases measured already cost nothing
        verdicts: Dict[str, Verdict] = {}
        for impl in impls:
            for mode in case.modes:
                key = (case.key, impl.name, mode)
                common = dict(section="op", sweep=case.sweep, case=case.label, B=case.B, T=case.T, D=case.D, H=case.H,
                              k_top=case.k_top, dtype=case.dtype, mode=mode, impl=impl.name, impl_label=impl.label)
                tick(f"{impl.name} {mode} T={case.T} B={case.B} D={case.D} k={case.k_top} {case.dtype}")
                if key in done:
                    rows.append({**done[key], **common})
                    continue
                reason = skips.skipped(case, impl, mode)
                if reason:
                    rows.append(_row(**common, status="skipped", note=reason))
                    continue
                if inputs is None and failure is None:
                    # Verify every implementation this case will time, then drop the reference's result (at
                    # large T its dense gradients are as big as the inputs).
                    try:
                        inputs = case.make_inputs(device)
                        expected = reference_result(inputs, case.k_top)
                        for other in impls:
                            if any(not skips.skipped(case, other, m) and (case.key, other.name, m) not in done for m in case.modes):
                                verdicts[other.name] = verify(other.fn, inputs, case.k_top, expected)
                        expected = None
                    except (RuntimeError, MemoryError) as exc:  # out of memory for the reference itself
                        inputs = expected = None
                        failure = f"reference failed: {type(exc).__name__}: {str(exc).splitlines()[0]}"
                if failure is not None:
                    rows.append(_row(**common, status="error", note=failure))
                    continue
                verdict = verdicts[impl.name]
                if not verdict.ok:
                    row = _row(**common, status="FAIL", note=f"verification failed: {verdict.message}")
                else:
                    row = _measure(case, impl, mode, inputs, device, cfg, peak_bandwidth, memory)
                    row.update(common, verify_max_error=f"{verdict.max_error:.3g}")
                    if row["status"] == "ok":
                        skips.record(case, impl, mode, row["median_ms"])
                done[key] = row
                rows.append(row)
        del inputs, expected
        if device == "cuda":
            torch.cuda.empty_cache()
    return rows


def _measure(case, impl, mode, inputs, device, cfg, peak_bandwidth, memory) -> Dict:
    grad_summary = case.upstream_grad(device)
    fn, setup, leaves = mode_callables(impl, inputs, case.k_top, mode, grad_summary)
    try:
        t = timing.time_fn(device, fn, setup, leaves, cfg)
        peak = memory.op(case, impl, mode, fn, setup, leaves)
    except torch.OutOfMemoryError as exc:
        return _row(status="OOM", note=str(exc).splitlines()[0])
    except RuntimeError as exc:  # CPU allocation failure, or a kernel error at this size
        return _row(status="error", note=f"{type(exc).__name__}: {str(exc).splitlines()[0]}")
    finally:
        for leaf in leaves:
            leaf.grad = None
    nbytes = min_bytes(case, mode)
    frac = nbytes / (t.median_ms * 1e-3) / peak_bandwidth if (peak_bandwidth and t.median_ms > 0) else None
    return _row(
        status="ok", median_ms=t.median_ms, p25_ms=t.p25_ms, p75_ms=t.p75_ms, reps=t.reps,
        peak_mem_mib=(peak / 2**20) if peak is not None else "", min_bytes=nbytes,
        bandwidth_frac=frac if frac is not None else "", note=impl.note,
    )


def is_number(x) -> bool:
    return isinstance(x, (int, float)) and not (isinstance(x, float) and math.isnan(x))
