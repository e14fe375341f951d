"""Step 4: the SAB-LSTM against cuDNN's nn.LSTM, fused path beside per-step path, and its host syncs.

Every model comes from the public model layer (`sab_kernels.nn.build_model`): "SAB fused" (k_top 5, k_att 1,
k_trunc 5, path "fused": the Triton sequence kernels on a GPU), "TBPTT fused" (k_top 0, the same kernels),
"SAB per-step" (path "step": a Python loop over the op) and "nn.LSTM" (cuDNN on a GPU), at the rows (T, B, H)
of the config. A training step is forward, cross-entropy at every step, backward and Adam, on one-hot inputs
of length T; inference is the forward under no_grad. Targets on a GPU (tuning goals, judged, never failing
the check): SAB fused training step <= 3x nn.LSTM for T <= 1000; TBPTT fused <= 1.5x; SAB fused >= 10x
faster than SAB per-step at T = 1000.

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
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F

from .config import CheckConfig
from .steps import StepResult

CLASSES = 10


SAB_FUSED, TBPTT_FUSED, SAB_STEP = "SAB fused", "TBPTT fused", "SAB per-step"


def _models(cfg: CheckConfig):
    """{name: factory(H)}: the SAB-LSTM on either path, its truncated-BPTT limit, and nn.LSTM."""
    from ...nn import build_model

    def sab(path, k_top):
        def factory(H):
            model = build_model("sab" if k_top else "tbptt", CLASSES, H, CLASSES, k_top=k_top, k_att=cfg.k_att,
                                k_trunc=cfg.k_trunc)
            model.core.path = path
            return model
        return factory

    def lstm(H):
        return build_model("lstm", CLASSES, H, CLASSES)

    cudnn = cfg.device == "cuda" and torch.backends.cudnn.is_available() and torch.backends.cudnn.enabled
    return {SAB_FUSED: sab("fused", cfg.k_top), TBPTT_FUSED: sab("fused", 0), SAB_STEP: sab("step", cfg.k_top),
            "nn.LSTM (cuDNN)" if cudnn else "nn.LSTM": lstm}


def make_step(factory: Callable, cfg: CheckConfig, T: int, seed: int = 0, B: Optional[int] = None,
              H: Optional[int] = None, mode: str = "train"):
    """(step, forward, model): a training step (or, mode "infer", a no-grad forward) on a fixed random batch,
    and the forward alone for counting."""
    B, H = B or cfg.lstm_rows[0][1], H or cfg.lstm_rows[0][2]
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, CLASSES, (B, T), generator=g)
    x = F.one_hot(tokens, CLASSES).float().to(cfg.device)
    y = torch.randint(0, CLASSES, (B, T), generator=g).to(cfg.device)
    torch.manual_seed(seed)
    model = factory(H).to(cfg.device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def forward():
        return F.cross_entropy(model(x).reshape(-1, CLASSES), y.reshape(-1))

    def step():
        opt.zero_grad(set_to_none=True)
        forward().backward()
        opt.step()

    def infer():
        with torch.no_grad():
            model(x)

    return (infer if mode == "infer" else step), forward, model


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


def _label(T: int, B: int, H: int) -> str:
    return f"T={T} B={B} H={H}"


def _targets(times: Dict, cfg: CheckConfig, lstm: str) -> List[str]:
    """The GPU targets, judged on the training-step rows (met / MISSED; never failing the check)."""
    out = []
    for T, B, H, _ in cfg.lstm_rows:
        key = lambda name: (name, "train", _label(T, B, H))  # noqa: E731
        base = times.get(key(lstm))
        for name, limit in ((SAB_FUSED, 3.0), (TBPTT_FUSED, 1.5)):
            t = times.get(key(name))
            if t and base and (T <= 1000 or name == TBPTT_FUSED):
                out.append(f"{name} training step at {_label(T, B, H)}: {t / base:.2f}x {lstm} (target <= {limit:g}x): "
                           + ("met" if t / base <= limit else "MISSED"))
        fused, step = times.get(key(SAB_FUSED)), times.get(key(SAB_STEP))
        if T == 1000 and fused and step:
            out.append(f"{SAB_FUSED} vs {SAB_STEP} at {_label(T, B, H)}: {step / fused:.1f}x faster (target >= 10x): "
                       + ("met" if step / fused >= 10 else "MISSED"))
    return out


def run_model(cfg: CheckConfig) -> StepResult:
    rows, lines, times, mems = [], [], {}, {}
    models = _models(cfg)
    lstm = list(models)[-1]
    for T, B, H, reps in cfg.lstm_rows:
        label = _label(T, B, H)
        for mode in ("train", "infer"):
            for name, factory in models.items():
                if name == SAB_STEP and T > cfg.per_step_max_T:
                    continue
                step, _, _ = make_step(factory, cfg, T, B=B, H=H, mode=mode)
                ts = time_steps(step, cfg.device, reps, cfg.lstm_warmup)
                med = 1e3 * statistics.median(ts)
                times[(name, mode, label)] = med
                mem = peak_mib(step, cfg.device) if mode == "train" else None
                if mem is not None:
                    mems[(name, label)] = mem
                rows.append(dict(step="lstm", what=f"{name} {mode}", T=T, B=B, value=med, unit="ms",
                                 peak_mib=mem if mem is not None else "", note=f"median of {reps}, hidden {H}"))
    header = ("| row | mode | " + " | ".join(models) + " | fused / " + lstm + " | per-step / fused |\n|"
              + "---|" * (len(models) + 4))
    body = []
    for T, B, H, _ in cfg.lstm_rows:
        label = _label(T, B, H)
        for mode in ("train", "infer"):
            got = {n: times.get((n, mode, label)) for n in models}
            cells = [f"{v:.3g} ms" if v else "-" for v in got.values()]
            ratio = f"{got[SAB_FUSED] / got[lstm]:.2f}x" if got[SAB_FUSED] and got[lstm] else "-"
            speed = f"{got[SAB_STEP] / got[SAB_FUSED]:.1f}x" if got[SAB_STEP] and got[SAB_FUSED] else "-"
            body.append(f"| {label} | {mode} | " + " | ".join(cells) + f" | {ratio} | {speed} |")
    lines.append(f"Training step (forward, cross-entropy at every step, backward, Adam) and inference (no_grad forward), "
                 f"one-hot input of {CLASSES}; SAB k_top {cfg.k_top}, k_att {cfg.k_att}, k_trunc {cfg.k_trunc}; median "
                 f"wall ms (device synced after each); the per-step path up to T = {cfg.per_step_max_T}.\n\n"
                 + header + "\n" + "\n".join(body))
    if mems:
        lines.append("Peak memory of a training step (MiB): " + ", ".join(
            f"{n} {label}: {m:.0f}" for (n, label), m in mems.items()))
    verdicts = _targets(times, cfg, lstm)
    if verdicts:
        lines.append("Targets (tuning goals; a miss does not fail the check):\n\n" + "\n".join(f"- {v}" for v in verdicts))

    # Host syncs of one SAB training step at T = sync_T, forward and backward apart.
    T, B = cfg.sync_T, cfg.lstm_rows[0][1]
    sync_rows = []
    for name in (SAB_FUSED, SAB_STEP):
        step, forward, model = make_step(models[name], cfg, T, seed=1)
        step()  # warm-up: compile / allocate outside the count
        model.zero_grad(set_to_none=True)
        with count_host_syncs(cfg.device) as fwd_counts:
            loss = forward()
        with count_host_syncs(cfg.device) as bwd_counts:
            loss.backward()
        for phase, c in (("forward", fwd_counts), ("backward", bwd_counts)):
            for kind in ("cuda_syncs", "python_reads"):
                if kind in c:
                    sync_rows.append((f"{name} {phase}", kind, c[kind]))
                    rows.append(dict(step="syncs", what=f"{name} {phase} {kind}", T=T, B=B, value=c[kind], unit="count",
                                     note=f"{c[kind] / T:.2f} per time step"))
    table = "| path, phase | counted | total | per time step |\n|---|---|---|---|\n" + "\n".join(
        f"| {p} | {'synchronizing CUDA calls (sync debug mode)' if k == 'cuda_syncs' else 'host reads from Python'} | {n} | {n / T:.2f} |"
        for p, k, n in sync_rows)
    lines.append(f"Host syncs of one SAB-LSTM training step at T={T} (B={B}):\n\n{table}")
    data = {"times": times, "syncs": sync_rows}
    if cfg.device == "cuda":
        lat = sync_latency_us()
        n = sum(c for p, k, c in sync_rows if k == "cuda_syncs" and p.startswith(SAB_FUSED))
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
        lines.append("CPU mode: the SAB-LSTM's kernels run in the Triton interpreter (one program after another on numpy), "
                     "so these times exercise the code and mean nothing for a GPU. Host reads are counted (they would be "
                     "syncs on a GPU); their cost is measured on CUDA only.")
    summary = ", ".join(f"{n} {label} train: {ms:.3g} ms" for (n, mode, label), ms in times.items() if mode == "train")
    return StepResult("sab-lstm", True, summary, "\n\n".join(lines), rows, data=data)
