"""pytest-benchmark cases for the sparse-attention op, CI-sized, on the engine of `python -m sab_kernels.bench`.

    pytest bench/bench_sparse_attention.py                        # all cases, table in the terminal
    pytest bench/bench_sparse_attention.py -k "fused or eager"    # a subset
    pytest bench/bench_sparse_attention.py --benchmark-save=mine  # keep for --benchmark-compare later

Same registry (implementations), verifier and mode definitions as the CLI: every case is checked against
the eager reference before it is timed, and a mismatch fails the case instead of timing it. The device is
CUDA when available (set SAB_BENCH_DEVICE=cpu to force the CPU); the fused column is Triton on CUDA and the
compiled C++ kernels on CPU (the reference, with a warning, where they are not built).
"""

import atexit
import os

import pytest
import torch

from sab_kernels.bench.registry import MODES, OpCase, implementations
from sab_kernels.bench.runner import mode_callables
from sab_kernels.bench.memory import MemoryMeter
from sab_kernels.bench.verify import reference_result, verify

DEVICE = os.environ.get("SAB_BENCH_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
DTYPE = "bfloat16" if DEVICE == "cuda" else "float32"
CASES = [OpCase("T", B=8, T=T, D=64, H=64, k_top=8, dtype=DTYPE) for T in (256, 1024, 4096)]
IMPLS = {impl.name: impl for impl in implementations(DEVICE)[0]}
_verdicts = {}
_meter = []


def _memory() -> MemoryMeter:
    """One memory meter for the session (on CPU a worker process measuring resident-set growth)."""
    if not _meter:
        _meter.append(MemoryMeter(DEVICE))
        atexit.register(_meter[0].close)
    return _meter[0]


def _verified(case: OpCase, name: str):
    """Inputs of `case`, after checking implementation `name` on them against the reference (once)."""
    inputs = case.make_inputs(DEVICE)
    if (case.key, name) not in _verdicts:
        _verdicts[(case.key, name)] = verify(IMPLS[name].fn, inputs, case.k_top, reference_result(inputs, case.k_top))
    verdict = _verdicts[(case.key, name)]
    if not verdict.ok:
        pytest.fail(f"{IMPLS[name].label} does not match the reference at {case.label}: {verdict.message}")
    return inputs


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", list(IMPLS))
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"T{c.T}")
def test_sparse_attention(benchmark, case, name, mode):
    inputs = _verified(case, name)
    fn, setup, leaves = mode_callables(IMPLS[name], inputs, case.k_top, mode, case.upstream_grad(DEVICE))
    sync = torch.cuda.synchronize if DEVICE == "cuda" else (lambda: None)

    def prepare():
        for leaf in leaves:
            leaf.grad = None
        arg = setup() if setup is not None else None
        sync()
        return ((arg,) if setup is not None else ()), {}

    def timed(*arg):
        fn(*arg)
        sync()

    benchmark.group = f"{mode} {case.label}"
    benchmark.extra_info.update(impl=IMPLS[name].label, device=DEVICE, B=case.B, T=case.T, D=case.D, H=case.H,
                                k_top=case.k_top, dtype=case.dtype)
    benchmark.pedantic(timed, setup=prepare, rounds=20, warmup_rounds=3, iterations=1)
    peak = _memory().op(case, IMPLS[name], mode, fn, setup, leaves)
    if peak is not None:
        benchmark.extra_info["peak_mem_mib"] = round(peak / 2**20, 3)
