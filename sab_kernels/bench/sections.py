"""The two model-level sections: per-call dispatch overhead of the op, and SAB-LSTM vs nn.LSTM training.

The op sweep lives in `runner.py`; these reuse its row format and `timing.py`.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from . import timing
from .memory import MemoryMeter
from .registry import fused_backend
from .runner import _row


def load_sablstm() -> Tuple[Optional[type], str]:
    """(SABLSTM, "") or (None, why not): the module is optional for the benchmark."""
    try:
        from ..nn import SABLSTM
    except Exception as exc:  # noqa: BLE001 - not written yet, or broken: skip that part, say why
        return None, f"sab_kernels.nn.SABLSTM is not importable ({type(exc).__name__}: {exc})"
    return SABLSTM, ""


# ------------------------------------------------------------------------------------ dispatch overhead

@dataclasses.dataclass(frozen=True)
class OverheadConfig:
    B: int = 1
    T: int = 64  # memory slots
    D: int = 128
    H: int = 128  # also the LSTM hidden and input size
    k_top: int = 5
    steps: int = 64  # SAB-LSTM sequence length for the per-step numbers


def run_overhead(device: str, quick: bool, progress: Optional[Callable[[str], None]] = None) -> List[Dict]:
    """Per-call wall time at a tiny shape (B=1), where the fixed cost of each call shows.

    Rows: the op (custom op + validation + backend), the backend's forward called directly (the kernel
    alone), the eager reference, an nn.LSTMCell step, torch.add (the framework's floor), and, when the module
    is importable, one SAB-LSTM step against the same loop with no memory (k_top=0)."""
    cfg = OverheadConfig()
    tick = progress or (lambda _d: None)
    calls, repeats = (50, 5) if quick else (300, 7)
    g = torch.Generator().manual_seed(0)
    B, T, D, H, k = cfg.B, cfg.T, cfg.D, cfg.H, cfg.k_top
    q, K, V, w = (torch.randn(*s, generator=g).to(device) for s in ((B, D), (B, T, D), (B, T, H), (D,)))
    lengths = torch.full((B,), T, dtype=torch.int64, device=device)
    backend = fused_backend(device)
    from ..kernels import get_backend
    from ..op import sparse_attention
    from ..reference import sparse_attention_reference

    cell = nn.LSTMCell(H, H).to(device)
    x, h, c = (torch.randn(B, H, generator=g).to(device) for _ in range(3))
    small = torch.randn(8, device=device)
    leaves = [t.clone().requires_grad_(True) for t in (q, K, V, w)]
    cell_leaves = [t.clone().requires_grad_(True) for t in (x, h, c)]
    g_sum = torch.randn(B, H, generator=g).to(device)

    def op_fwd_bwd():
        for t in leaves:
            t.grad = None
        sparse_attention(*leaves, k, backend=backend).summary.backward(g_sum)

    def cell_fwd_bwd():
        for t in cell_leaves:
            t.grad = None
        hn, cn = cell(cell_leaves[0], (cell_leaves[1], cell_leaves[2]))
        (hn.sum() + cn.sum()).backward()

    measures = [
        ("torch.add", "forward", "x + 1 on 8 floats: the framework's per-op floor", lambda: small + 1),
        ("nn.LSTMCell", "forward", f"one LSTM cell step, B={B}, input=hidden={H}", lambda: cell(x, (h, c))),
        ("op", "forward", f"sparse_attention(backend={backend!r}), B={B} T={T} D={D} H={H} k_top={k}",
         lambda: sparse_attention(q, K, V, w, k, backend=backend)),
        ("backend direct", "forward", f"kernels.get_backend({backend!r}).forward: the kernel without the op's wrapper",
         lambda: get_backend(backend).forward(q, K, V, w, k, lengths)),
        ("eager reference", "forward", "sparse_attention_reference", lambda: sparse_attention_reference(q, K, V, w, k)),
        ("op", "fwd+bwd", "forward with grad, then backward", op_fwd_bwd),
        ("nn.LSTMCell", "fwd+bwd", "forward with grad, then backward", cell_fwd_bwd),
    ]
    rows = []
    for name, mode, note, fn in measures:
        tick(f"overhead {name} {mode}")
        if mode == "forward":
            with torch.no_grad():
                t = timing.wall_per_call_us(device, fn, calls, repeats)
        else:
            t = timing.wall_per_call_us(device, fn, calls, repeats)
        rows.append(_overhead_row(name, mode, t, note, B=B, T=T, D=D, H=H, k_top=k))

    SABLSTM, why = load_sablstm()
    if SABLSTM is None:
        rows.append(_row(section="overhead", impl="SAB-LSTM step", status="unavailable", note=why))
        return rows
    steps = cfg.steps
    xs = torch.randn(steps, B, H, generator=g).to(device)
    for label, k_top in (("SAB-LSTM step", k), ("LSTM loop step (k_top=0)", 0)):
        tick(f"overhead {label}")
        # The per-step loop: its cost per op call is what this section measures (the fused path has none).
        model = SABLSTM(H, H, k_top=k_top, k_att=1, k_trunc=None, backend=backend, path="step").to(device)
        with torch.no_grad():
            t = timing.wall_per_call_us(device, lambda: model(xs), max(2, calls // 20), repeats, warmup=2)
        t = timing.Timing(t.median_ms / steps, t.p25_ms / steps, t.p75_ms / steps, t.reps)
        note = (f"SABLSTM({H}, {H}, k_top={k_top}, k_att=1) forward over {steps} steps / {steps}, B={B}, no grad"
                + (f"; memory grows to {steps} slots" if k_top else "; same loop without the memory"))
        rows.append(_overhead_row(label, "forward", t, note, B=B, T=steps, D=H, H=H, k_top=k_top))
    return rows


def _overhead_row(name, mode, t: timing.Timing, note, **sizes):
    return _row(section="overhead", impl=name, impl_label=name, mode=mode, status="ok", median_ms=t.median_ms / 1e3,
                p25_ms=t.p25_ms / 1e3, p75_ms=t.p75_ms / 1e3, reps=t.reps, note=note, **sizes)


# ---------------------------------------------------------------------------------- SAB-LSTM vs nn.LSTM

@dataclasses.dataclass(frozen=True)
class LSTMConfig:
    B: int = 32
    input_size: int = 10
    hidden: int = 128
    classes: int = 10
    k_top: int = 5
    k_att: int = 2
    k_trunc: int = 10


class _LoopLSTM(nn.Module):
    """nn.LSTMCell stepped in Python with full BPTT: the loop SAB-LSTM is built on, without the memory."""

    def __init__(self, input_size, hidden):
        super().__init__()
        self.cell = nn.LSTMCell(input_size, hidden)

    def forward(self, x):
        h = c = x.new_zeros(x.shape[1], self.cell.hidden_size)
        hs = []
        for x_t in x.unbind(0):
            h, c = self.cell(x_t, (h, c))
            hs.append(h)
        return torch.stack(hs), None


class _Tagger(nn.Module):
    """A recurrent core (T, B, I) -> (T, B, F) and a linear head per step: a copy-task-like model."""

    def __init__(self, core, features, classes):
        super().__init__()
        self.core, self.head = core, nn.Linear(features, classes)

    def forward(self, x):
        return self.head(self.core(x)[0])


def lstm_models(device: str, cfg: LSTMConfig) -> Tuple[List[Tuple[str, str, Callable[[], nn.Module]]], List[str]]:
    """(name, label, factory) of the models compared, and notes on what was left out."""
    I, Hd, C = cfg.input_size, cfg.hidden, cfg.classes
    models = [
        ("nn.LSTM", "nn.LSTM, full BPTT", lambda: _Tagger(nn.LSTM(I, Hd), Hd, C)),
        ("LSTMCell loop", "nn.LSTMCell loop, full BPTT", lambda: _Tagger(_LoopLSTM(I, Hd), Hd, C)),
    ]
    SABLSTM, why = load_sablstm()
    if SABLSTM is None:
        return models, [f"SAB-LSTM rows skipped: {why}"]
    fused = device == "cpu" and SABLSTM(I, Hd, backend="cpu").uses_fused_path(torch.zeros(1, 1, I))
    variants = [("SAB-LSTM", "SAB-LSTM (fused op, per-step loop)", fused_backend(device), cfg.k_top, "step"),
                ("SAB-LSTM ref", "SAB-LSTM (reference op)", "reference", cfg.k_top, "step"),
                ("TBPTT per-step", "truncated-BPTT LSTM (k_top=0), per-step loop", fused_backend(device), 0, "step")]
    if fused:
        variants[:0] = [("SAB-LSTM fused", "SAB-LSTM, fused sequence (csrc/sab_lstm.cpp)", "cpu", cfg.k_top, "fused"),
                        ("TBPTT fused", "truncated-BPTT LSTM (k_top=0), fused sequence", "cpu", 0, "fused")]
    for name, label, backend, k_top, path in variants:
        def factory(backend=backend, k_top=k_top, path=path):
            core = SABLSTM(I, Hd, k_top=k_top, k_att=cfg.k_att, k_trunc=cfg.k_trunc, backend=backend, path=path)
            return _Tagger(core, 2 * Hd, C)

        models.append((name, label, factory))
    notes = [] if fused else ["fused SAB-LSTM rows: the fused sequence path runs on CPU tensors with the compiled extension"]
    return models, notes


REFERENCE_MAX_T = 512  # SAB-LSTM with the reference op: its cost per step grows with the memory; enough for scale


def lstm_setup(quick: bool, T_values: Optional[Sequence[int]] = None) -> Tuple[LSTMConfig, List[int]]:
    cfg = LSTMConfig(B=8, hidden=64) if quick else LSTMConfig()
    return cfg, (list(T_values) if T_values else ([32, 128] if quick else [128, 256, 512, 1024, 2048]))


def lstm_step(device: str, quick: bool, T: int, name: str) -> Callable[[], None]:
    """One training step of model `name` at sequence length T: data and weights from fixed seeds, so the
    memory worker rebuilds exactly what the timing process runs."""
    cfg, _ = lstm_setup(quick)
    factory = {n: f for n, _, f in lstm_models(device, cfg)[0]}[name]
    g = torch.Generator().manual_seed(T)
    x = torch.randn(T, cfg.B, cfg.input_size, generator=g).to(device)
    y = torch.randint(0, cfg.classes, (T, cfg.B), generator=g).to(device)
    torch.manual_seed(0)
    model = factory().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step():
        opt.zero_grad(set_to_none=True)
        logits = model(x)
        nn.functional.cross_entropy(logits.reshape(-1, cfg.classes), y.reshape(-1)).backward()
        opt.step()

    return step


def run_lstm(device: str, quick: bool, timing_cfg: timing.TimingConfig, T_values: Optional[Sequence[int]] = None,
             limit_s: float = 20.0, progress: Optional[Callable[[str], None]] = None, memory=None) -> Tuple[List[Dict], List[str]]:
    """One training step (forward, cross-entropy at every step, backward, Adam) per model and T."""
    memory = memory or MemoryMeter(device, use_worker=False)
    cfg, T_list = lstm_setup(quick, T_values)
    tick = progress or (lambda _d: None)
    models, notes = lstm_models(device, cfg)
    if any(n == "SAB-LSTM ref" for n, _, _ in models) and not T_values and max(T_list) > REFERENCE_MAX_T:
        notes.append(f"SAB-LSTM with the reference op is run up to T={REFERENCE_MAX_T} only (its step cost grows with the memory)")
    rows, slow = [], {}
    for T in T_list:
        for name, label, _ in models:
            tick(f"lstm {name} T={T}")
            if name == "SAB-LSTM ref" and T > REFERENCE_MAX_T and not T_values:
                continue  # the reference op grows with the memory: shown up to REFERENCE_MAX_T, for scale
            common = dict(section="lstm", sweep="T", case=f"B={cfg.B} I={cfg.input_size} hidden={cfg.hidden} T={T}",
                          B=cfg.B, T=T, H=cfg.hidden, k_top=cfg.k_top if name.startswith("SAB") else "",
                          dtype="float32", mode="train step", impl=name, impl_label=label)
            if name in slow:
                rows.append(_row(**common, status="skipped", note=slow[name]))
                continue
            try:
                step = lstm_step(device, quick, T, name)
                t = timing.time_fn(device, step, cfg=timing_cfg)
                peak = memory.lstm(quick, T, name, step)  # in process: this (warm) step; CPU worker: its own copy
                del step
            except (RuntimeError, torch.OutOfMemoryError) as exc:
                rows.append(_row(**common, status="error", note=f"{type(exc).__name__}: {str(exc).splitlines()[0]}"))
                continue
            if t.median_ms / 1e3 > limit_s:
                slow[name] = f"skipped: {t.median_ms / 1e3:.1f} s per step at T={T}"
            note = (f"k_top={cfg.k_top} k_att={cfg.k_att} k_trunc={cfg.k_trunc}" if name.startswith("SAB")
                    else f"k_trunc={cfg.k_trunc}" if name.startswith("TBPTT") else "full BPTT")
            rows.append(_row(**common, status="ok", median_ms=t.median_ms, p25_ms=t.p25_ms, p75_ms=t.p75_ms, reps=t.reps,
                             peak_mem_mib=(peak / 2**20) if peak is not None else "", note=note))
    return rows, notes
