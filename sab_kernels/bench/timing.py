"""Timing and peak memory, one way per device, the same for every implementation.

Time (median, 25th and 75th percentiles, in ms):
  CUDA: `triton.testing.do_bench` (it warms up, clears L2 before every run and times with CUDA events).
        When a run needs untimed preparation (the backward mode needs a fresh forward each time), the same
        recipe is written out: clear L2, prepare, then time only the measured call with CUDA events.
  CPU:  a `time.perf_counter` loop: warm-up calls, then repeated calls until both a minimum count and a
        time budget are reached (one warm-up and 3 runs when one call takes longer than the whole budget); the garbage collector
        is off while timing. Untimed preparation runs
        before each timed call. Gradients are reset to None before every run on both devices.

Peak memory (bytes above what was live when the run started, so inputs are not counted), in process:
  CUDA: `torch.cuda.max_memory_allocated()` after `reset_peak_memory_stats()`, minus the allocated bytes
        before the run.
  CPU:  the PyTorch profiler with `profile_memory=True`: the peak of the running sum of the CPU allocator's
        allocations and frees. It does not see memory a kernel maps itself, so the CLI measures CPU memory
        as resident-set growth in a worker process instead (memory.py) and uses this only as a fallback.
"""

from __future__ import annotations

import dataclasses
import gc
import statistics
import time
from typing import Any, Callable, Optional, Sequence

import torch


@dataclasses.dataclass
class Timing:
    median_ms: float
    p25_ms: float
    p75_ms: float
    reps: int


@dataclasses.dataclass
class TimingConfig:
    """CPU loop settings; CUDA uses do_bench's warm-up and repetition times (ms)."""

    warmup: int = 2  # untimed calls before timing
    min_reps: int = 5
    max_reps: int = 200
    budget_s: float = 1.0  # keep repeating until this much time has been timed (and min_reps reached)
    cuda_warmup_ms: int = 25
    cuda_rep_ms: int = 100


QUICK = TimingConfig(warmup=1, min_reps=3, max_reps=50, budget_s=0.15, cuda_warmup_ms=10, cuda_rep_ms=40)
FULL = TimingConfig()


def _quantiles(times_ms: Sequence[float]) -> Timing:
    xs = sorted(times_ms)
    if len(xs) == 1:
        return Timing(xs[0], xs[0], xs[0], 1)
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return Timing(statistics.median(xs), q[0], q[2], len(xs))


def _reset(grads_of: Sequence[torch.Tensor]):
    for t in grads_of:
        t.grad = None


def time_cpu(fn: Callable, setup: Optional[Callable[[], Any]] = None, grads_of=(), cfg: TimingConfig = FULL) -> Timing:
    """Median of fn() (or fn(setup()) with setup untimed) over a perf_counter loop."""

    def once():
        _reset(grads_of)
        arg = setup() if setup is not None else None
        t0 = time.perf_counter()
        fn(arg) if setup is not None else fn()
        return time.perf_counter() - t0

    min_reps, warm = cfg.min_reps, []
    for _ in range(cfg.warmup):
        warm.append(once())
        if warm[-1] > cfg.budget_s:  # seconds per call: one warm-up and 3 runs; the spread shows how stable they are
            min_reps = min(min_reps, 3)
            break
    times = []
    gc.collect()
    gc.disable()
    try:
        total = 0.0
        while len(times) < cfg.max_reps and (len(times) < min_reps or total < cfg.budget_s):
            dt = once()
            times.append(dt * 1e3)
            total += dt
    finally:
        gc.enable()
    return _quantiles(times)


def time_cuda(fn: Callable, setup: Optional[Callable[[], Any]] = None, grads_of=(), cfg: TimingConfig = FULL) -> Timing:
    """do_bench(fn) with quantiles; with `setup`, do_bench's recipe with setup() outside the timed events."""
    import triton
    from triton.testing import do_bench

    if setup is None:
        med, p25, p75 = do_bench(fn, warmup=cfg.cuda_warmup_ms, rep=cfg.cuda_rep_ms, grad_to_none=list(grads_of) or None,
                                 quantiles=[0.5, 0.25, 0.75])
        return Timing(med, p25, p75, -1)  # do_bench picks the count itself
    driver = triton.runtime.driver.active
    cache = driver.get_empty_cache_for_benchmark()

    def once(start=None, end=None):
        _reset(grads_of)
        driver.clear_cache(cache)
        arg = setup()
        if start is not None:
            start.record()
        fn(arg)
        if end is not None:
            end.record()

    once()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(3):
        once()
    torch.cuda.synchronize()
    estimate_ms = max((time.perf_counter() - t0) * 1e3 / 3, 1e-3)  # setup included: a safe over-estimate
    for _ in range(max(1, int(cfg.cuda_warmup_ms / estimate_ms))):
        once()
    n = max(cfg.min_reps, min(1000, int(cfg.cuda_rep_ms / estimate_ms)))
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)]
    for start, end in events:
        once(start, end)
    torch.cuda.synchronize()
    return _quantiles([s.elapsed_time(e) for s, e in events])


def time_fn(device: str, fn, setup=None, grads_of=(), cfg: TimingConfig = FULL) -> Timing:
    return (time_cuda if device == "cuda" else time_cpu)(fn, setup, grads_of, cfg)


def peak_memory(device: str, fn: Callable, setup: Optional[Callable[[], Any]] = None, grads_of=()) -> Optional[int]:
    """Peak bytes allocated during one fn() (or fn(setup()), setup not counted) above the bytes live before it."""
    _reset(grads_of)
    gc.collect()
    arg = setup() if setup is not None else None
    call = (lambda: fn(arg)) if setup is not None else fn
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        call()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    return _cpu_peak_bytes(call)


def _cpu_peak_bytes(call: Callable) -> Optional[int]:
    from torch.profiler import ProfilerActivity, profile

    try:
        from torch._C._profiler import _EventType
    except ImportError:  # private API moved: report no number rather than a wrong one
        return None
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        call()
    allocations, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        if node.tag == _EventType.Allocation:
            allocations.append((node.start_time_ns, node.extra_fields.alloc_size))  # + alloc, - free
        stack.extend(node.children)
    live = peak = 0
    for _, size in sorted(allocations, key=lambda a: a[0]):
        live += size
        peak = max(peak, live)
    return peak


def wall_per_call_us(device: str, fn: Callable, calls: int = 200, repeats: int = 7, warmup: int = 20) -> Timing:
    """Wall-clock microseconds per call of `calls` back-to-back calls (one synchronize at the end of each
    batch on CUDA): the host-side cost that a per-time-step op pays. Median over `repeats` batches."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    per_call = []
    gc.collect()
    gc.disable()
    try:
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            sync()
            per_call.append((time.perf_counter() - t0) * 1e6 / calls)
    finally:
        gc.enable()
    t = _quantiles(per_call)
    return Timing(t.median_ms, t.p25_ms, t.p75_ms, repeats * calls)  # fields hold microseconds here
