"""The report: environment header, Markdown tables, one CSV and PNG plots, all from the runner's rows."""

from __future__ import annotations

import csv
import datetime
import os
import platform
import subprocess
import sys
from typing import Dict, List, Optional, Sequence

import torch

from .runner import COLUMNS, is_number

SWEEP_FIELD = {"T": "T", "B": "B", "D": "D", "k_top": "k_top", "dtype": "dtype"}
MODE_ORDER = ("forward", "backward", "fwd+bwd")


# ------------------------------------------------------------------------------------------ environment

def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if commit.returncode != 0:
        return "unknown"
    return commit.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")


def _load() -> str:
    """1-minute load average: timings taken while other work shares the cores are not worth much."""
    try:
        load = os.getloadavg()[0]
    except OSError:
        return "unknown"
    busy = load > 0.25 * (os.cpu_count() or 1)
    return f"{load:.2f}" + (" (BUSY machine: other processes share the cores, timings are noisy)" if busy else "")


def peak_bandwidth_bytes_per_s(device_index: int = 0) -> Optional[float]:
    """Theoretical DRAM bandwidth of a CUDA device: 2 (double data rate) x bus width x memory clock."""
    props = torch.cuda.get_device_properties(device_index)
    bus_bits, clock_khz = getattr(props, "memory_bus_width", 0), getattr(props, "memory_clock_rate", 0)
    if not bus_bits or not clock_khz:
        return None
    return 2 * bus_bits / 8 * clock_khz * 1e3


def measured_copy_bandwidth(nbytes: int = 1 << 30) -> float:
    """Bytes per second of a device-to-device copy (read + write), timed with do_bench: the practical ceiling."""
    from triton.testing import do_bench

    src = torch.empty(nbytes // 4, dtype=torch.float32, device="cuda")
    dst = torch.empty_like(src)
    ms = do_bench(lambda: dst.copy_(src), return_mode="median")
    del src, dst
    return 2 * nbytes / (ms * 1e-3)


def environment(device: str, peak_bw: Optional[float] = None, copy_bw: Optional[float] = None) -> Dict[str, str]:
    """What ran where: recorded in the Markdown, the CSV and the plots."""
    from .. import __version__
    from ..kernels import cpu_backend

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    env = {
        "date (UTC)": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "command": " ".join([os.path.basename(sys.executable), "-m", "sab_kernels.bench", *sys.argv[1:]]),
        "sab_kernels": f"{__version__}, git {_git_commit()}",
        "C++ CPU kernels": "built" if cpu_backend.AVAILABLE else "NOT built (backend='cpu' falls back to the reference)",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton_version,
        "machine": f"{platform.system()} {platform.machine()}, {_cpu_model()}, {os.cpu_count()} logical cores",
        "torch threads": str(torch.get_num_threads()),
        "load average at start": _load(),
        "device": device,
    }
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        env["GPU"] = f"{props.name}, {props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}"
        env["peak bandwidth"] = f"{peak_bw / 1e9:.0f} GB/s (2 x bus width x memory clock)" if peak_bw else "unknown"
        if copy_bw:
            env["measured copy bandwidth"] = f"{copy_bw / 1e9:.0f} GB/s (1 GiB device-to-device copy)"
    return env


def env_line(env: Dict[str, str]) -> str:
    where = env.get("GPU") or env["machine"]
    return f"{where} | torch {env['torch']} | triton {env['triton']} | sab_kernels {env['sab_kernels']} | {env['date (UTC)']} UTC"


# ------------------------------------------------------------------------------------------------ tables

def _fmt_ms(row) -> str:
    if row.get("status") != "ok":
        return row.get("status", "") or "-"
    med, p25, p75 = row["median_ms"], row["p25_ms"], row["p75_ms"]
    spread = f" ±{50 * (p75 - p25) / med:.0f}%" if med > 0 and is_number(p25) and is_number(p75) else ""
    return f"{_num(med)}{spread}"


def _num(x: float) -> str:
    if x == 0:
        return "0"
    if x >= 100:
        return f"{x:.0f}"
    if x >= 10:
        return f"{x:.1f}"
    if x >= 1:
        return f"{x:.2f}"
    return f"{x:.3g}"


def _table(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in body]
    return "\n".join(lines)


def _impl_order(rows) -> List[tuple]:
    seen = {}
    for r in rows:
        seen.setdefault(r["impl"], r["impl_label"] or r["impl"])
    return list(seen.items())


def _x_values(rows, field):
    xs = []
    for r in rows:
        if r[field] not in xs:
            xs.append(r[field])
    return xs


def _mem(row) -> Optional[float]:
    return row["peak_mem_mib"] if _ok(row) and is_number(row.get("peak_mem_mib")) else None


def _ok(row) -> bool:
    return row is not None and row.get("status") == "ok" and is_number(row.get("median_ms"))


def _base_desc(rows, field) -> str:
    r = rows[0]
    parts = {"B": f"B={r['B']}", "T": f"T={r['T']}", "D": f"D=H={r['D']}" if r["D"] == r["H"] else f"D={r['D']} H={r['H']}",
             "k_top": f"k_top={r['k_top']}", "dtype": str(r["dtype"])}
    return ", ".join(v for k, v in parts.items() if k != field and not (field == "D" and k == "D"))


def op_tables(rows: List[Dict]) -> List[str]:
    """One time table per (sweep, mode) and one peak-memory table per sweep."""
    out = []
    op = [r for r in rows if r["section"] == "op"]
    for sweep in [s for s in SWEEP_FIELD if any(r["sweep"] == s for r in op)]:
        srows = [r for r in op if r["sweep"] == sweep]
        field = SWEEP_FIELD[sweep]
        impls = _impl_order(srows)
        xs = _x_values(srows, field)
        modes = [m for m in MODE_ORDER if any(r["mode"] == m for r in srows)]
        get = {(r[field], r["mode"], r["impl"]): r for r in srows}
        others = [(n, l) for n, l in impls if n != "fused"]
        has_fused = any(n == "fused" for n, _ in impls)
        for mode in modes:
            has_bw = any(is_number(get.get((x, mode, "fused"), {}).get("bandwidth_frac")) for x in xs)
            header = [field] + [l for _, l in impls]
            if has_fused:
                header += [f"fused vs {l}" for _, l in others]
            if has_bw:
                header.append("fused % of peak BW")
            body = []
            for x in xs:
                line = [str(x)] + [_fmt_ms(get.get((x, mode, n), {})) for n, _ in impls]
                f = get.get((x, mode, "fused"))
                if has_fused:
                    for n, _ in others:
                        o = get.get((x, mode, n))
                        line.append(f"{o['median_ms'] / f['median_ms']:.2f}x" if _ok(f) and _ok(o) else "-")
                if has_bw:
                    line.append(f"{100 * f['bandwidth_frac']:.0f}%" if f and is_number(f.get("bandwidth_frac")) else "-")
                body.append(line)
            title = f"### Time vs {field}, {mode} ({_base_desc(srows, field)}): median ms, ±half the IQR"
            out.append(title + "\n\n" + _table(header, body))
        # Peak memory, every mode in one table, and fused / eager for fwd+bwd.
        ratio = has_fused and any(n == "eager" for n, _ in impls) and "fwd+bwd" in modes
        header = [field] + [f"{l} {m}" for m in modes for _, l in impls] + (["fused / eager, fwd+bwd"] if ratio else [])
        body = []
        for x in xs:
            line = [str(x)]
            for m in modes:
                for n, _ in impls:
                    mem = _mem(get.get((x, m, n)))
                    line.append(_num(mem) if mem is not None else "-")
            if ratio:
                f, e = _mem(get.get((x, "fwd+bwd", "fused"))), _mem(get.get((x, "fwd+bwd", "eager")))
                line.append(f"{f / e:.2g}" if f is not None and e else "-")
            body.append(line)
        if any(r.get("status") == "ok" and is_number(r.get("peak_mem_mib")) for r in srows):
            out.append(f"### Peak memory vs {field} ({_base_desc(srows, field)}): MiB above the inputs\n\n" + _table(header, body))
    return out


# The targets: (what, device, mode, minimum T, compare with, threshold, kind).
TARGETS = [
    ("fused fwd+bwd >= 3x eager reference", "cpu", "fwd+bwd", 1024, "eager", 3.0, "speedup"),
    ("fused fwd+bwd >= 1.5x compiled reference", "cpu", "fwd+bwd", 1024, "compiled", 1.5, "speedup"),
    ("fused fwd+bwd peak memory well below eager reference's (checked as <= 1/2)", "cpu", "fwd+bwd", 64, "eager", 0.5, "memory"),
    ("fused fwd+bwd >= 5x eager reference", "cuda", "fwd+bwd", 4096, "eager", 5.0, "speedup"),
    ("fused fwd+bwd >= 2x compiled reference", "cuda", "fwd+bwd", 4096, "compiled", 2.0, "speedup"),
    ("fused forward >= 60% of bandwidth roofline", "cuda", "forward", 64, None, 0.6, "bandwidth"),
    ("fused fwd+bwd peak memory <= 1/2 eager reference's", "cuda", "fwd+bwd", 64, "eager", 0.5, "memory"),
]
TARGET_BASE = {"cpu": dict(B=32, D=128, H=128, k_top=8, dtype="float32"),
               "cuda": dict(B=32, D=128, H=128, k_top=8, dtype="bfloat16")}


def targets_table(rows: List[Dict], device: str) -> Optional[str]:
    """The issue's targets, checked on the T sweep at the target sizes: value per T, and met or not."""
    base = TARGET_BASE[device]
    op = [r for r in rows if r["section"] == "op" and r["sweep"] == "T" and all(r[k] == v for k, v in base.items())]
    if not op or not any(r["impl"] == "fused" for r in op):
        return None
    get = {(r["T"], r["mode"], r["impl"]): r for r in op}
    Ts = sorted({r["T"] for r in op})
    body = []
    for what, dev, mode, t_min, other, threshold, kind in TARGETS:
        if dev != device:
            continue
        cells, verdicts = [], []
        for T in Ts:
            f, o = get.get((T, mode, "fused")), get.get((T, mode, other)) if other else None
            value = None
            if kind == "speedup" and _ok(f) and _ok(o):
                value, text = o["median_ms"] / f["median_ms"], f"{o['median_ms'] / f['median_ms']:.2f}x"
            elif kind == "memory" and _mem(f) is not None and _mem(o):
                value, text = _mem(f) / _mem(o), f"{_mem(f) / _mem(o):.2g}"
            elif kind == "bandwidth" and _ok(f) and is_number(f.get("bandwidth_frac")):
                value, text = f["bandwidth_frac"], f"{100 * f['bandwidth_frac']:.0f}%"
            else:
                text = "-"
            if value is not None and T >= t_min:
                verdicts.append(value <= threshold if kind == "memory" else value >= threshold)
            cells.append(text if T >= t_min or text == "-" else f"({text})")
        verdict = "no data" if not verdicts else ("met" if all(verdicts) else f"NOT met ({verdicts.count(False)} of {len(verdicts)})")
        body.append([what + (f", T >= {t_min}" if t_min > 64 else "")] + cells + [verdict])
        if kind == "memory":  # the allocation floor of dense gradients (on CPU the C++ kernels keep them mostly virtual)
            floor_cells = []
            for T in Ts:
                e, r = _mem(get.get((T, mode, other))), get.get((T, mode, "fused"))
                elt = torch.empty((), dtype=getattr(torch, r["dtype"])).element_size() if r else 0
                floor = r["B"] * T * (r["D"] + r["H"]) * elt / 2**20 if r else None
                floor_cells.append(f"{floor / e:.2f}" if floor and e else "-")
            body.append(["  (for scale: bytes of the dense key and value gradients / eager's peak)"] + floor_cells + [""])
    desc = ", ".join(f"{k}={v}" for k, v in base.items() if k != "dtype") + f", {base['dtype']}"
    return (f"### Targets of issue 5 ({desc}; values in parentheses are below the target's T range)\n\n"
            + _table(["target"] + [f"T={T}" for T in Ts] + ["verdict"], body))


def headline_table(rows: List[Dict]) -> Optional[str]:
    """The README's table: fwd+bwd over T at the base sizes, time of each implementation, speed-ups, memory."""
    op = [r for r in rows if r["section"] == "op" and r["sweep"] == "T" and r["mode"] == "fwd+bwd"]
    if not op:
        return None
    impls = _impl_order(op)
    get = {(r["T"], r["impl"]): r for r in op}
    others = [(n, l) for n, l in impls if n != "fused"] if any(n == "fused" for n, _ in impls) else []
    header = ["T"] + [f"{l} (ms)" for _, l in impls] + [f"vs {l}" for _, l in others]
    has_mem = ("fused" in dict(impls)) and ("eager" in dict(impls))
    if has_mem:
        header += ["peak MiB fused / eager"]
    body = []
    for T in _x_values(op, "T"):
        f = get.get((T, "fused"))
        line = [str(T)] + [_num(get[(T, n)]["median_ms"]) if _ok(get.get((T, n))) else get.get((T, n), {}).get("status", "-")
                           for n, _ in impls]
        line += [f"{get[(T, n)]['median_ms'] / f['median_ms']:.1f}x" if _ok(f) and _ok(get.get((T, n))) else "-" for n, _ in others]
        if has_mem:
            fm, em = _mem(f), _mem(get.get((T, "eager")))
            line.append(f"{_num(fm)} / {_num(em)}" if fm is not None and em is not None else "-")
        body.append(line)
    return (f"Forward + backward, {_base_desc(op, 'T')}; median ms; speed-up of the fused op; peak memory above the inputs.\n\n"
            + _table(header, body))


def overhead_table(rows: List[Dict]) -> Optional[str]:
    ov = [r for r in rows if r["section"] == "overhead"]
    if not ov:
        return None
    body = [[r["impl"], r["mode"], f"{r['median_ms'] * 1e3:.1f}" if _ok(r) else r["status"], r["note"]] for r in ov]
    text = "### Per-call overhead at a tiny shape: wall-clock µs per call (median of back-to-back batches)\n\n"
    text += _table(["what", "mode", "µs per call", "details"], body)
    us = {(r["impl"], r["mode"]): r["median_ms"] * 1e3 for r in ov if _ok(r)}
    lines = []
    if ("op", "forward") in us and ("backend direct", "forward") in us:
        d = us[("op", "forward")] - us[("backend direct", "forward")]
        lines.append(f"- dispatch overhead of the op (op − backend called directly): {d:.1f} µs per call")
    if ("op", "forward") in us and ("nn.LSTMCell", "forward") in us:
        lines.append(f"- op forward / LSTMCell forward at B=1: {us[('op', 'forward')] / us[('nn.LSTMCell', 'forward')]:.2f}")
    if ("op", "fwd+bwd") in us and ("nn.LSTMCell", "fwd+bwd") in us:
        lines.append(f"- op fwd+bwd / LSTMCell fwd+bwd at B=1: {us[('op', 'fwd+bwd')] / us[('nn.LSTMCell', 'fwd+bwd')]:.2f}")
    if ("SAB-LSTM step", "forward") in us and ("LSTM loop step (k_top=0)", "forward") in us:
        s, l = us[("SAB-LSTM step", "forward")], us[("LSTM loop step (k_top=0)", "forward")]
        lines.append(f"- SAB-LSTM step {s:.1f} µs = LSTM loop step {l:.1f} µs + memory (attend + write) {s - l:.1f} µs "
                     f"({100 * (s - l) / s:.0f}% of the step)")
        share = (s - l) / s
        lines.append(f"- target (issue 5), an SAB-LSTM step at B=1 dominated by the LSTM cell rather than by the memory and the "
                     f"op's dispatch: {'met' if share < 0.5 else 'NOT met'} (memory {100 * share:.0f}% of the step)")
        if ("op", "forward") in us:
            o = us[("op", "forward")]
            lines.append(f"- of the memory's {s - l:.1f} µs, the op call itself is at most {o:.1f} µs (measured with the memory "
                         f"full); the other {s - l - o:.1f} µs are the module's own work around it (projections, "
                         "the slot write, Python bookkeeping)")
    return text + ("\n\n" + "\n".join(lines) if lines else "")


def lstm_table(rows: List[Dict]) -> Optional[str]:
    lr = [r for r in rows if r["section"] == "lstm"]
    if not lr:
        return None
    impls = _impl_order(lr)
    xs = _x_values(lr, "T")
    get = {(r["T"], r["impl"]): r for r in lr}
    header = ["T"] + [f"{l} ms" for _, l in impls] + [f"{l} MiB" for _, l in impls]
    body = []
    for x in xs:
        line = [str(x)] + [_fmt_ms(get.get((x, n), {})) for n, _ in impls]
        line += [_num(_mem(get.get((x, n)))) if _mem(get.get((x, n))) is not None else "-" for n, _ in impls]
        body.append(line)
    r0 = lr[0]
    return (f"### Training step (forward, loss at every step, backward, Adam): B={r0['B']} hidden={r0['H']}; "
            f"median ms ±half the IQR, and peak MiB above the inputs\n\n" + _table(header, body))


def verification_summary(rows: List[Dict]) -> str:
    op = [r for r in rows if r["section"] == "op"]
    failed = [r for r in op if r["status"] == "FAIL"]
    checked = {(r["case"], r["impl"]) for r in op if r["status"] in ("ok", "FAIL")}
    if not failed:
        return (f"Verification: all {len(checked)} (case, implementation) pairs matched the eager reference "
                "(indices exactly; outputs and all four input gradients within the test suite's tolerances, or for a gradient "
                "a relative RMS error below 1% in float32) before timing.")
    lines = [f"Verification: {len({(r['case'], r['impl']) for r in failed})} of {len(checked)} (case, implementation) pairs "
             "FAILED and were not timed:"]
    seen = set()
    for r in failed:
        if (r["case"], r["impl"]) not in seen:
            seen.add((r["case"], r["impl"]))
            lines.append(f"- {r['impl_label']} at {r['case']}: {r['note']}")
    return "\n".join(lines)


def markdown(rows: List[Dict], env: Dict[str, str], notes: Sequence[str] = ()) -> str:
    parts = ["# sab-kernels benchmark", _table(["", ""], [[k, v] for k, v in env.items()])]
    if notes:
        parts.append("Notes:\n" + "\n".join(f"- {n}" for n in notes))
    head = headline_table(rows)
    if head:
        parts += ["## Headline", head]
    if any(r["section"] == "op" for r in rows):
        parts.append("## The op: fused vs eager reference vs torch.compile(reference) vs dense topk")
        parts.append(verification_summary(rows))
        tt = targets_table(rows, env.get("device", "cpu"))
        if tt:
            parts.append(tt)
        parts += op_tables(rows)
    ov = overhead_table(rows)
    if ov:
        parts += ["## Dispatch overhead (SAB calls the op once per time step)", ov]
    lt = lstm_table(rows)
    if lt:
        parts += ["## SAB-LSTM vs LSTM with full BPTT", lt]
    return "\n\n".join(parts) + "\n"


def write_csv(path: str, rows: List[Dict], env: Dict[str, str]) -> None:
    """One row per measurement; the environment first as '# key: value' lines (pandas: comment='#')."""
    with open(path, "w", newline="") as f:
        for k, v in env.items():
            f.write(f"# {k}: {v}\n")
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})


# ------------------------------------------------------------------------------------------------- plots

def plots(out_dir: str, rows: List[Dict], env: Dict[str, str]) -> List[str]:
    """time_vs_T.png, speedup_vs_T.png, memory_vs_T.png (op, T sweep) and lstm.png; returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    written = []
    footer = env_line(env)
    op = [r for r in rows if r["section"] == "op" and r["sweep"] == "T"]
    modes = [m for m in MODE_ORDER if any(r["mode"] == m for r in op)]
    impls = _impl_order(op)
    desc = _base_desc(op, "T") if op else ""

    def save(fig, name, title):
        fig.suptitle(title)
        fig.text(0.01, 0.005, footer, fontsize=7, color="gray")
        fig.tight_layout(rect=(0, 0.03, 1, 0.95))
        path = os.path.join(out_dir, name)
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)

    styles = [dict(ls="-", marker="o"), dict(ls="--", marker="s"), dict(ls="-.", marker="^"), dict(ls=":", marker="D")]

    def style(i):  # distinct line styles so implementations with equal values stay visible
        return styles[i % len(styles)]

    def t_ticks(ax, rs):
        ts = sorted({r["T"] for r in rs if is_number(r.get("T"))})
        if ts:
            ax.set_xticks(ts, [str(t) for t in ts])
            ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())

    def series(rs, mode, impl, key):
        pts = sorted((r["T"], r) for r in rs if r["mode"] == mode and r["impl"] == impl and _ok(r) and is_number(r.get(key)))
        return [p[0] for p in pts], [p[1] for p in pts]

    if op and modes:
        fig, axes = plt.subplots(1, len(modes), figsize=(5 * len(modes), 4), squeeze=False)
        for ax, mode in zip(axes[0], modes):
            for i, (n, l) in enumerate(impls):
                xs, rs = series(op, mode, n, "median_ms")
                if xs:
                    ax.loglog(xs, [r["median_ms"] for r in rs], label=l, **style(i))
                    ax.fill_between(xs, [r["p25_ms"] for r in rs], [r["p75_ms"] for r in rs], alpha=0.2)
            ax.set(title=mode, xlabel="T (memory slots)", ylabel="time (ms)")
            t_ticks(ax, op)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
        save(fig, "time_vs_T.png", f"sparse_attention: time vs T ({desc})")

        if any(n == "fused" for n, _ in impls):
            fig, axes = plt.subplots(1, len(modes), figsize=(5 * len(modes), 4), squeeze=False)
            for ax, mode in zip(axes[0], modes):
                fx, fr = series(op, mode, "fused", "median_ms")
                fused = dict(zip(fx, fr))
                for i, (n, l) in enumerate(impls):
                    if n == "fused":
                        continue
                    xs, rs = series(op, mode, n, "median_ms")
                    pts = [(x, r["median_ms"] / fused[x]["median_ms"]) for x, r in zip(xs, rs) if x in fused]
                    if pts:
                        ax.semilogx([p[0] for p in pts], [p[1] for p in pts], label=f"vs {l}", **style(i))
                ax.axhline(1.0, color="gray", lw=1, ls="--")
                ax.set(title=mode, xlabel="T (memory slots)", ylabel="speed-up of fused (x)")
                t_ticks(ax, op)
                ax.grid(True, which="both", alpha=0.3)
                ax.legend(fontsize=8)
            save(fig, "speedup_vs_T.png", f"sparse_attention: speed-up of the fused op ({desc})")

        if any(is_number(r.get("peak_mem_mib")) for r in op):
            fig, axes = plt.subplots(1, len(modes), figsize=(5 * len(modes), 4), squeeze=False)
            for ax, mode in zip(axes[0], modes):
                for i, (n, l) in enumerate(impls):
                    xs, rs = series(op, mode, n, "peak_mem_mib")
                    pts = [(x, r["peak_mem_mib"]) for x, r in zip(xs, rs) if r["peak_mem_mib"] > 0]
                    if pts:
                        ax.loglog([p[0] for p in pts], [p[1] for p in pts], label=l, **style(i))
                ax.set(title=mode, xlabel="T (memory slots)", ylabel="peak MiB above inputs")
                t_ticks(ax, op)
                ax.grid(True, which="both", alpha=0.3)
                ax.legend(fontsize=8)
            save(fig, "memory_vs_T.png", f"sparse_attention: peak memory vs T ({desc})")

    lr = [r for r in rows if r["section"] == "lstm"]
    if lr:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4), squeeze=False)
        for i, (n, l) in enumerate(_impl_order(lr)):
            xs, rs = series(lr, "train step", n, "median_ms")
            if xs:
                axes[0][0].loglog(xs, [r["median_ms"] for r in rs], label=l, **style(i))
            xs, rs = series(lr, "train step", n, "peak_mem_mib")
            if xs:
                axes[0][1].loglog(xs, [max(r["peak_mem_mib"], 1e-3) for r in rs], label=l, **style(i))
        axes[0][0].set(title="training step time", xlabel="T (sequence length)", ylabel="ms per step")
        axes[0][1].set(title="peak memory", xlabel="T (sequence length)", ylabel="MiB above inputs")
        for ax in axes[0]:
            t_ticks(ax, lr)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
        r0 = lr[0]
        save(fig, "lstm_vs_T.png", f"SAB-LSTM vs LSTM with full BPTT (B={r0['B']}, hidden={r0['H']})")
    return written


def write_all(out_dir: str, rows: List[Dict], env: Dict[str, str], notes: Sequence[str] = (), with_plots: bool = True):
    """results.md, results.csv and the PNGs in `out_dir`; returns (markdown text, written paths)."""
    os.makedirs(out_dir, exist_ok=True)
    text = markdown(rows, env, notes)
    paths = [os.path.join(out_dir, "results.md"), os.path.join(out_dir, "results.csv")]
    with open(paths[0], "w") as f:
        f.write(text)
    write_csv(paths[1], rows, env)
    head = headline_table(rows)
    if head:  # ready to paste into the top-level README
        paths.append(os.path.join(out_dir, "headline.md"))
        with open(paths[-1], "w") as f:
            f.write(f"{head}\n\n<sub>{env_line(env)}</sub>\n")
    if with_plots:
        paths += plots(out_dir, rows, env)
    return text, paths
