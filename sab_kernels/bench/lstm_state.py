"""The sequence state under use, beside the whole-sequence rows of `lstm_table`: streaming one step per call and
chunked training, every model measured side by side in one run.

    python -m sab_kernels.bench.lstm_state [--quick] [--threads 1] [--out DIR]

Streaming (generation, an online agent): the same sequence as one call and as T calls of one step each,
carrying the state, under inference_mode; SAB (fused and per-step paths, k_att = 1) and nn.LSTM streamed the
same way. Also the cost of a call early and late in the stream: what streaming adds per call must not grow
with the number of slots.
Chunked: the forward of one sequence whole and in chunks with the graph kept across chunks (each chunk
continues the last one's state), peak resident memory of each in a fresh process.

Writes lstm_state.csv and lstm_state.md into --out (default: a folder under runs/, never the committed results).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence

import torch

STREAM = dict(T=1500, B=4, H=128)
CHUNKED = dict(T=4096, B=16, H=128, chunks=64)
QUICK_STREAM = dict(T=200, B=4, H=64)
QUICK_CHUNKED = dict(T=512, B=8, H=64, chunks=16)
K_TOP, K_TRUNC = 5, 5
STREAM_TARGET, CHUNK_TARGET = 3.0, 1.5  # streaming / one call; chunked peak / whole peak


def _model(name: str, H: int):
    from ..nn import SABLSTM

    torch.manual_seed(0)
    if name == "nn.LSTM":
        return torch.nn.LSTM(H, H)
    return SABLSTM(H, H, K_TOP, 1, K_TRUNC, backend="cpu", path="fused" if name == "SAB fused" else "step")


def streaming(T: int, B: int, H: int, models: Sequence[str], progress=None) -> List[Dict]:
    """ms for the whole sequence in one call and streamed one step per call, and ms per call over the first and
    the last tenth of the stream."""
    x = torch.randn(T, B, H, generator=torch.Generator().manual_seed(0))
    rows = []
    for name in models:
        if progress:
            progress(f"streaming {name}")
        model = _model(name, H)
        with torch.inference_mode():
            model(x[:8])  # warm-up
            t0 = time.perf_counter()
            model(x)
            whole = time.perf_counter() - t0
            state, calls = None, []
            for t in range(T):
                c0 = time.perf_counter()
                _, state = model(x[t : t + 1], state)
                calls.append(time.perf_counter() - c0)
        tenth = max(1, T // 10)
        rows.append(dict(kind="streaming", model=name, T=T, B=B, H=H, whole_ms=1e3 * whole, stream_ms=1e3 * sum(calls),
                         ratio=sum(calls) / whole, early_call_ms=1e3 * sum(calls[:tenth]) / tenth,
                         late_call_ms=1e3 * sum(calls[-tenth:]) / tenth))
    return rows


def _peak_worker(spec: dict) -> int:
    """In a fresh process: the peak resident-set growth in bytes of one forward, whole or chunked."""
    torch.set_num_threads(spec["threads"])
    T, B, H, chunks = spec["T"], spec["B"], spec["H"], spec["chunks"]
    model = _model(spec["model"], H)
    x = torch.randn(T, B, H, generator=torch.Generator().manual_seed(0))
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the high-water mark to the current resident set
    before = _status_kib("VmHWM")
    size = T // chunks if spec["chunked"] else T
    outs, state = [], None
    for j in range(0, T, size):
        out, state = model(x[j : j + size], state)
        outs.append(out)  # the graph of every chunk is kept, as for a loss over the whole sequence
    return (_status_kib("VmHWM") - before) * 1024


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def _peak(spec: dict) -> int:
    # Allocations of 64 KiB and more get their own mmap, so the high-water mark counts what is really live.
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    done = subprocess.run([sys.executable, "-m", "sab_kernels.bench.lstm_state", "--worker", json.dumps(spec)], env=env, check=True,
                          capture_output=True, text=True)
    return int(done.stdout.strip().splitlines()[-1])


def chunked(T: int, B: int, H: int, chunks: int, models: Sequence[str], threads: int, progress=None) -> List[Dict]:
    rows = []
    for name in models:
        if progress:
            progress(f"chunked {name}")
        spec = dict(T=T, B=B, H=H, chunks=chunks, model=name, threads=threads)
        whole, parts = _peak(dict(spec, chunked=False)), _peak(dict(spec, chunked=True))
        rows.append(dict(kind="chunked", model=name, T=T, B=B, H=H, chunks=chunks, whole_MiB=whole / 2**20,
                         chunked_MiB=parts / 2**20, ratio=parts / whole))
    return rows


def table(rows: List[Dict]) -> str:
    lines = []
    stream = [r for r in rows if r["kind"] == "streaming"]
    if stream:
        r0 = stream[0]
        lines += [f"Streaming, T={r0['T']} B={r0['B']} H={r0['H']}, k_att=1, inference_mode:", "",
                  "| model | one call | one step per call | ratio | a call, first tenth | a call, last tenth |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {r['model']} | {r['whole_ms']:.0f} ms | {r['stream_ms']:.0f} ms | {r['ratio']:.2f}x | "
                  f"{r['early_call_ms']:.2f} ms | {r['late_call_ms']:.2f} ms |" for r in stream]
        lines.append("")
    chunk = [r for r in rows if r["kind"] == "chunked"]
    if chunk:
        r0 = chunk[0]
        lines += [f"Chunked forward with the graph kept, T={r0['T']} in {r0['chunks']} chunks, B={r0['B']} H={r0['H']} "
                  "(peak resident-set growth, a fresh process each):", "",
                  "| model | whole | chunked | ratio |", "|---|---|---|---|"]
        lines += [f"| {r['model']} | {r['whole_MiB']:.0f} MiB | {r['chunked_MiB']:.0f} MiB | {r['ratio']:.2f}x |" for r in chunk]
    return "\n".join(lines)


def verdicts(rows: List[Dict]) -> List[str]:
    out = []
    for r in rows:
        if r["model"] != "SAB fused":
            continue
        limit = STREAM_TARGET if r["kind"] == "streaming" else CHUNK_TARGET
        what = "streaming / one call" if r["kind"] == "streaming" else "chunked / whole peak memory"
        out.append(f"SAB fused {what}: {r['ratio']:.2f}x (target <= {limit}x): {'met' if r['ratio'] <= limit else 'NOT met'}")
    return out


def run(quick: bool, threads: int, progress=None) -> List[Dict]:
    s, c = (QUICK_STREAM, QUICK_CHUNKED) if quick else (STREAM, CHUNKED)
    rows = streaming(s["T"], s["B"], s["H"], ("nn.LSTM", "SAB fused", "SAB per-step"), progress)
    return rows + chunked(c["T"], c["B"], c["H"], c["chunks"], ("SAB fused", "SAB per-step"), threads, progress)


def write(rows: List[Dict], out: str, header: str) -> str:
    os.makedirs(out, exist_ok=True)
    fields = sorted({k for r in rows for k in r})
    with open(os.path.join(out, "lstm_state.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    text = header + "\n\n" + table(rows) + "\n\n" + "\n".join(f"- {v}" for v in verdicts(rows)) + "\n"
    with open(os.path.join(out, "lstm_state.md"), "w") as f:
        f.write(text)
    return text


def main(argv: Optional[Sequence[str]] = None) -> int:
    if argv is None and len(sys.argv) == 3 and sys.argv[1] == "--worker":
        print(_peak_worker(json.loads(sys.argv[2])))
        return 0
    p = argparse.ArgumentParser(prog="python -m sab_kernels.bench.lstm_state", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes (seconds)")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    p.add_argument("--out", default=None, help="output folder (default runs/bench-lstm-state[-quick])")
    args = p.parse_args(argv)
    if args.threads < 1:
        p.error(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    rows = run(args.quick, args.threads, progress=lambda d: print(f"... {d}", file=sys.stderr, flush=True))
    out = args.out or os.path.join("runs", "bench-lstm-state" + ("-quick" if args.quick else ""))
    header = (f"# The SAB-LSTM state: streaming and chunks, {args.threads} thread(s), torch {torch.__version__}\n\n"
              f"Command: `python -m sab_kernels.bench.lstm_state{' --quick' if args.quick else ''} --threads {args.threads}`. "
              f"k_top={K_TOP}, k_trunc={K_TRUNC}, input size = H; every row measured in this one run.")
    print(write(rows, out, header))
    return 0


if __name__ == "__main__":
    sys.exit(main())
