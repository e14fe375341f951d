"""Step 4: an SAB-LSTM training step against cuDNN's nn.LSTM, and the SAB-LSTM's per-step host syncs.

Both models come from the public model layer (`sab_kernels.nn.build_model`): "sab" (k_top 5, k_att 1,
k_trunc 5) and "lstm" (torch.nn.LSTM, cuDNN on a GPU). A training step is forward, cross-entropy at every
step, backward and Adam, on one-hot inputs of length T.

Host syncs: counted over one SAB training step, forward and backward apart, two ways. On CUDA,
`torch.cuda.set_sync_debug_mode("warn")` reports every synchronizing CUDA call (the authority). On both
devices, host reads of tensor data from Python (.item, .tolist, .cpu, .numpy, bool/int/float of a tensor)
are counted by wrapping those methods (on CPU the only count; there they are not syncs, only the places
that would be on a GPU). Their cost on CUDA: the count times the round-trip latency of one sync with an
empty queue (a floor: a sync also drains the queue and stops the host from running ahead), and the share
of the step's wall time the GPU spends in kernels (torch.profiler): far below 100% means the step is
bound by the host (launches and syncs), not by the GPU.
"""

from __future__ import annotations

import contextlib
import statistics
import time
import warnings
from typing import Callable, Dict, List

import torch
import torch.nn.functional as F

from .config import CheckConfig
from .steps import StepResult

CLASSES = 10


def _models(cfg: CheckConfig):
    from ...nn import build_model

    def sab():
        return build_model("sab", CLASSES, cfg.lstm_hidden, CLASSES, k_top=cfg.k_top, k_att=cfg.k_att, k_trunc=cfg.k_trunc)

    def lstm():
        return build_model("lstm", CLASSES, cfg.lstm_hidden, CLASSES)

    cudnn = cfg.device == "cuda" and torch.backends.cudnn.is_available() and torch.backends.cudnn.enabled
    return {"SAB-LSTM": sab, "nn.LSTM (cuDNN)" if cudnn else "nn.LSTM": lstm}


def make_step(factory: Callable, cfg: CheckConfig, T: int, seed: int = 0):
    """(step, forward_backward, model): a training step on a fixed random batch, and its halves for counting."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, CLASSES, (cfg.lstm_B, T), generator=g)
    x = F.one_hot(tokens, CLASSES).float().to(cfg.device)
    y = torch.randint(0, CLASSES, (cfg.lstm_B, T), generator=g).to(cfg.device)
    torch.manual_seed(seed)
    model = factory().to(cfg.device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def forward():
        return F.cross_entropy(model(x).reshape(-1, CLASSES), y.reshape(-1))

    def step():
        opt.zero_grad(set_to_none=True)
        forward().backward()
        opt.step()

    return step, forward, model


def _sync(device: str):
    if device == "cuda":
        torch.cuda.synchronize()


def time_steps(step: Callable, device: str, reps: int, warmup: int = 2) -> List[float]:
    """Wall seconds of `reps` steps, each ended by a device sync, after `warmup` untimed steps."""
    for _ in range(warmup):
        step()
    _sync(device)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def peak_mib(step: Callable, device: str):
    if device != "cuda":
        return None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


_HOST_READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__")


@contextlib.contextmanager
def count_host_syncs(device: str):
    """Yields a dict; on exit it holds "python_reads" (host reads of tensor data from Python; on CUDA only of
    CUDA tensors) and, on CUDA, "cuda_syncs" (synchronizing CUDA calls reported by the sync debug mode)."""
    counts: Dict[str, int] = {"python_reads": 0}
    originals = {name: getattr(torch.Tensor, name) for name in _HOST_READS if hasattr(torch.Tensor, name)}

    def wrap(name, original):
        def counted(self, *args, **kwargs):
            if device != "cuda" or self.is_cuda:
                counts["python_reads"] += 1
            return original(self, *args, **kwargs)

        return counted

    for name, original in originals.items():
        setattr(torch.Tensor, name, wrap(name, original))
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if device == "cuda":
                previous = torch.cuda.get_sync_debug_mode()
                torch.cuda.set_sync_debug_mode("warn")
            try:
                yield counts
            finally:
                if device == "cuda":
                    torch.cuda.set_sync_debug_mode(previous)
        if device == "cuda":
            counts["cuda_syncs"] = sum("synchroniz" in str(w.message) for w in caught)
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


def sync_latency_us(reps: int = 200) -> float:
    """Median µs of one `.item()` round trip on a one-element CUDA tensor with nothing queued."""
    x = torch.zeros(1, device="cuda")
    x.item()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        x.item()
        times.append(time.perf_counter() - t0)
    return 1e6 * statistics.median(times)


def device_event_ms(events, device_type) -> float:
    """Summed duration (ms) of the profiler events that ran on `device_type` (for CUDA: kernels, copies, memsets;
    one stream, so they do not overlap)."""
    return sum(e.time_range.elapsed_us() for e in events if e.device_type == device_type) / 1e3


def gpu_busy_ms(step: Callable) -> float:
    """Milliseconds the GPU spends in kernels and copies (torch.profiler) during one step."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    return device_event_ms(prof.events(), DeviceType.CUDA)


def run_model(cfg: CheckConfig) -> StepResult:
    rows, lines, times, mems = [], [], {}, {}
    models = _models(cfg)
    for T, reps in zip(cfg.lstm_T, cfg.lstm_reps):
        for name, factory in models.items():
            step, _, _ = make_step(factory, cfg, T)
            ts = time_steps(step, cfg.device, reps, cfg.lstm_warmup)
            med = 1e3 * statistics.median(ts)
            mem = peak_mib(step, cfg.device)
            times[(name, T)] = med
            if mem is not None:
                mems[(name, T)] = mem
            rows.append(dict(step="lstm", what=f"{name} train step", T=T, B=cfg.lstm_B, value=med, unit="ms",
                             peak_mib=mem if mem is not None else "", note=f"median of {reps}, hidden {cfg.lstm_hidden}"))
    sab, lstm = list(models)
    cols = [f"{n} ms" for n in models] + ["SAB / LSTM"] + ([f"{n} peak MiB" for n in models] if mems else [])
    header = "| T | " + " | ".join(cols) + " |\n|" + "---|" * (len(cols) + 1)
    body = [f"| {T} | " + " | ".join(f"{times[(n, T)]:.3g}" for n in models) + f" | {times[(sab, T)] / times[(lstm, T)]:.1f}x |"
            + "".join(f" {mems[(n, T)]:.0f} |" for n in models if mems) for T in cfg.lstm_T]
    lines.append(f"Training step (forward, cross-entropy at every step, backward, Adam), B={cfg.lstm_B}, hidden "
                 f"{cfg.lstm_hidden}, one-hot input of {CLASSES}; SAB k_top {cfg.k_top}, k_att {cfg.k_att}, k_trunc "
                 f"{cfg.k_trunc}; median wall ms per step (device synced after each).\n\n" + header + "\n" + "\n".join(body))

    # Host syncs of one SAB training step at T = sync_T, forward and backward apart.
    T = cfg.sync_T
    step, forward, model = make_step(models[sab], cfg, T, seed=1)
    step()  # warm-up: compile / allocate outside the count
    model.zero_grad(set_to_none=True)
    with count_host_syncs(cfg.device) as fwd_counts:
        loss = forward()
    with count_host_syncs(cfg.device) as bwd_counts:
        loss.backward()
    sync_rows = []
    for phase, c in (("forward", fwd_counts), ("backward", bwd_counts)):
        for kind in ("cuda_syncs", "python_reads"):
            if kind in c:
                sync_rows.append((phase, kind, c[kind]))
                rows.append(dict(step="syncs", what=f"{phase} {kind}", T=T, B=cfg.lstm_B, value=c[kind], unit="count",
                                 note=f"{c[kind] / T:.2f} per time step"))
    table = "| phase | counted | total | per time step |\n|---|---|---|---|\n" + "\n".join(
        f"| {p} | {'synchronizing CUDA calls (sync debug mode)' if k == 'cuda_syncs' else 'host reads from Python'} | {n} | {n / T:.2f} |"
        for p, k, n in sync_rows)
    lines.append(f"Host syncs of one SAB-LSTM training step at T={T} (B={cfg.lstm_B}):\n\n{table}")
    data = {"times": times, "syncs": sync_rows}
    if cfg.device == "cuda":
        lat = sync_latency_us()
        n = sum(c for p, k, c in sync_rows if k == "cuda_syncs")
        step_ms = 1e3 * statistics.median(time_steps(step, "cuda", 3, warmup=1))
        busy = gpu_busy_ms(step)
        rows += [dict(step="syncs", what="sync round-trip latency", value=lat, unit="us", note="empty queue, .item()"),
                 dict(step="syncs", what="sync floor cost per step", T=T, value=n * lat / 1e3, unit="ms",
                      note=f"{n} syncs x {lat:.1f} us"),
                 dict(step="syncs", what="SAB step wall", T=T, value=step_ms, unit="ms"),
                 dict(step="syncs", what="GPU kernel time per step", T=T, value=busy, unit="ms",
                      note=f"{100 * busy / step_ms:.0f}% of the wall time")]
        lines.append(f"Cost: one sync round trip with an empty queue takes {lat:.1f} µs, so the {n} syncs of a step cost at "
                     f"least {n * lat / 1e3:.2f} ms of its {step_ms:.1f} ms ({100 * n * lat / 1e3 / step_ms:.1f}%, a floor: a "
                     f"sync also drains the queue and keeps the host from running ahead). The GPU runs kernels for "
                     f"{busy:.2f} ms of the step ({100 * busy / step_ms:.0f}%): the rest is host time (Python, launches, syncs).")
    else:
        lines.append("CPU mode: the SAB-LSTM's op runs in the Triton interpreter (about 0.1 s per kernel launch), so these "
                     "times exercise the code and mean nothing for a GPU. Host reads are counted (they would be syncs on "
                     "a GPU); their cost is measured on CUDA only.")
    summary = ", ".join(f"{n} T={T}: {times[(n, T)]:.3g} ms" for T in cfg.lstm_T for n in models)
    return StepResult("sab-lstm", True, summary, "\n\n".join(lines), rows, data=data)
