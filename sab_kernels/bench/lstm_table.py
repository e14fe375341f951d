"""SAB-LSTM against torch.nn.LSTM at the sizes of the fast-SAB-LSTM issue, every model timed side by side in
one run: `python -m sab_kernels.bench.lstm_table [--quick] [--out DIR] [--threads 1]`.

Models (one layer, hidden H, input size H, a linear head of 10 classes on every step):
    nn.LSTM            torch.nn.LSTM, full BPTT (oneDNN/ATen's fused kernel)
    SAB fused          SABLSTM(k_top=5, k_trunc=5), path="fused" (csrc/sab_lstm.cpp: one C++ call per sequence)
    SAB per-step       the same module, path="step" (the Python loop over the op)
    TBPTT fused        SABLSTM(k_top=0, k_trunc=5): truncated-BPTT LSTM through the fused path
    TBPTT per-step     the same, per-step
Modes: "train" = forward, cross-entropy at every step, backward, Adam step; "infer" = forward under no_grad.
Also: the fraction of steps the fused backward visits when the loss reads only the last step of one sequence
(B = 1; a batch visits the union of its rows' steps): sparse replay skips the rest.

Writes lstm_table.csv, lstm_table.md (the table and the ratios to nn.LSTM) and lstm_table.png into --out.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from . import timing

# (T, B, H, k_att): the three rows and a long sequence.
CONFIGS = [(128, 8, 64, 1), (100, 64, 64, 2), (1000, 16, 128, 2), (4096, 16, 128, 2)]
QUICK_CONFIGS = [(64, 8, 32, 1), (128, 8, 64, 1)]
MODELS = ("nn.LSTM", "SAB fused", "SAB per-step", "TBPTT fused", "TBPTT per-step")
CLASSES, K_TOP, K_TRUNC = 10, 5, 5
TARGETS = {"SAB fused": 3.0, "TBPTT fused": 1.5}  # training step, at most this many times nn.LSTM
INFER_TARGET = ("SAB fused", (1000, 16, 128, 2), 2.0)


def build(name: str, H: int, k_att: int) -> nn.Module:
    """The model `name` of MODELS (batch-first in, logits out)."""
    from ..nn import build_model

    torch.manual_seed(0)
    if name == "nn.LSTM":
        return build_model("lstm", H, H, CLASSES)
    kind = "sab" if name.startswith("SAB") else "tbptt"
    model = build_model(kind, H, H, CLASSES, k_top=K_TOP, k_att=k_att, k_trunc=K_TRUNC, backend="cpu")
    model.core.path = "fused" if name.endswith("fused") else "step"
    return model


def step_fn(model: nn.Module, T: int, B: int, H: int, mode: str):
    g = torch.Generator().manual_seed(T)
    x = torch.randn(B, T, H, generator=g)
    y = torch.randint(0, CLASSES, (B, T), generator=g)
    if mode == "infer":
        def infer():
            with torch.no_grad():
                model(x)
        return infer
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def train():
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x).reshape(-1, CLASSES), y.reshape(-1)).backward()
        opt.step()
    return train


def visited_fraction(T: int, H: int, k_att: int) -> float:
    """Steps the fused backward replays when the loss reads only the last step of one sequence, over T."""
    from ..kernels import sab_lstm_fused

    core = build("SAB fused", H, k_att).core
    mem = core.memory
    x = torch.randn(T, 1, H, generator=torch.Generator().manual_seed(T))
    h0 = x.new_zeros(1, H)
    stats: Dict[str, int] = {}
    out, *_ = sab_lstm_fused.sequence(
        x, h0, h0, h0.unsqueeze(1), None, (core.weight_ih, core.weight_hh, core.bias_ih, core.bias_hh),
        (mem.query_proj.weight, mem.query_proj.bias, mem.key_proj.weight, mem.score_weight),
        K_TOP, k_att, K_TRUNC, stats=stats,
    )
    out[-1].sum().backward()
    return stats["steps_visited"] / stats["steps"]


def run(configs: Sequence[Tuple[int, int, int, int]], cfg: timing.TimingConfig, per_step_max_T: int,
        progress=None) -> List[Dict]:
    rows = []
    for T, B, H, k_att in configs:
        for mode in ("train", "infer"):
            for name in MODELS:
                if name.endswith("per-step") and T > per_step_max_T:
                    continue
                if progress:
                    progress(f"T={T} B={B} H={H} {mode} {name}")
                t = timing.time_cpu(step_fn(build(name, H, k_att), T, B, H, mode), cfg=cfg)
                rows.append(dict(T=T, B=B, H=H, k_att=k_att, mode=mode, model=name, median_ms=t.median_ms,
                                 p25_ms=t.p25_ms, p75_ms=t.p75_ms, reps=t.reps))
        rows.append(dict(T=T, B=B, H=H, k_att=k_att, mode="visited", model="SAB fused",
                         median_ms=visited_fraction(T, H, k_att), p25_ms="", p75_ms="", reps=1))
    return rows


def table(rows: List[Dict]) -> str:
    """Markdown: one line per (T, B, H, k_att, mode), ms and the ratio to nn.LSTM of the same line."""
    keys = sorted({(r["T"], r["B"], r["H"], r["k_att"]) for r in rows}, key=lambda k: (k[0], k[1]))
    head = "| T | B | H | k_att | mode | " + " | ".join(MODELS) + " | steps visited (B=1, last-step loss) |"
    lines = [head, "|" + "---|" * (6 + len(MODELS))]
    for key in keys:
        visited = next((r["median_ms"] for r in rows if (r["T"], r["B"], r["H"], r["k_att"]) == key and r["mode"] == "visited"), None)
        for mode in ("train", "infer"):
            got = {r["model"]: r["median_ms"] for r in rows if (r["T"], r["B"], r["H"], r["k_att"]) == key and r["mode"] == mode}
            base = got.get("nn.LSTM")
            cells = []
            for name in MODELS:
                ms = got.get(name)
                if ms is None:
                    cells.append("-")
                elif name == "nn.LSTM" or not base:
                    cells.append(f"{ms:.1f} ms")
                else:
                    cells.append(f"{ms:.1f} ms ({ms / base:.2f}x)")
            frac = f"{100 * visited:.0f}%" if visited is not None and mode == "train" else ""
            lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {key[3]} | {mode} | " + " | ".join(cells) + f" | {frac} |")
    return "\n".join(lines)


def verdicts(rows: List[Dict]) -> List[str]:
    def ms(key, mode, model):
        return next((r["median_ms"] for r in rows if (r["T"], r["B"], r["H"], r["k_att"]) == key
                     and r["mode"] == mode and r["model"] == model), None)

    out = []
    for model, limit in TARGETS.items():
        for key in sorted({(r["T"], r["B"], r["H"], r["k_att"]) for r in rows}):
            a, b = ms(key, "train", model), ms(key, "train", "nn.LSTM")
            if a and b:
                out.append(f"{model} training step at T={key[0]} B={key[1]} H={key[2]}: {a / b:.2f}x nn.LSTM "
                           f"(target <= {limit}x): {'met' if a / b <= limit else 'NOT met'}")
    model, key, limit = INFER_TARGET
    a, b = ms(key, "infer", model), ms(key, "infer", "nn.LSTM")
    if a and b:
        out.append(f"{model} inference at T={key[0]} B={key[1]} H={key[2]}: {a / b:.2f}x nn.LSTM "
                   f"(target <= {limit}x): {'met' if a / b <= limit else 'NOT met'}")
    return out


def plot(rows: List[Dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({(r["T"], r["B"], r["H"], r["k_att"]) for r in rows})
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, mode in zip(axes, ("train", "infer")):
        width = 0.8 / (len(MODELS) - 1)
        for i, name in enumerate(MODELS[1:]):
            ratios = []
            for key in keys:
                got = {r["model"]: r["median_ms"] for r in rows if (r["T"], r["B"], r["H"], r["k_att"]) == key and r["mode"] == mode}
                ratios.append(got[name] / got["nn.LSTM"] if name in got and got.get("nn.LSTM") else float("nan"))
            ax.bar([k + (i - 1.5) * width for k in range(len(keys))], ratios, width, label=name)
        ax.axhline(1.0, color="black", lw=0.8)
        ax.set_yscale("log")
        ax.set_xticks(range(len(keys)), [f"T={k[0]}\nB={k[1]} H={k[2]}" for k in keys])
        ax.set_title(f"{mode}: time / nn.LSTM (one thread, lower is better)")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sab_kernels.bench.lstm_table", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="two small configurations (seconds)")
    p.add_argument("--out", default=None, help="output folder (default bench/results/cpu-lstm-table[-quick])")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1, as the targets say)")
    p.add_argument("--per-step-max-T", type=int, default=1000, help="time the per-step path up to this T")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.threads < 1:
        p.error(f"--threads must be >= 1, got {args.threads}")
    if args.per_step_max_T < 1:
        p.error(f"--per-step-max-T must be >= 1, got {args.per_step_max_T}")
    from ..kernels import sab_lstm_fused

    reason = sab_lstm_fused.unsupported_reason(torch.zeros(1))
    if reason is not None:
        p.error(f"the fused SAB-LSTM path is unavailable: {reason}")
    out = args.out or os.path.join("bench", "results", "cpu-lstm-table" + ("-quick" if args.quick else ""))
    torch.set_num_threads(args.threads)
    cfg = timing.QUICK if args.quick else timing.TimingConfig(warmup=1, min_reps=3, max_reps=20, budget_s=2.0)
    bar = None
    if not args.no_progress:
        from tqdm import tqdm

        configs = QUICK_CONFIGS if args.quick else CONFIGS
        total = sum(2 * sum(1 for m in MODELS if not (m.endswith("per-step") and T > args.per_step_max_T))
                    for T, *_ in configs)
        bar = tqdm(total=total, desc="lstm table", file=sys.stderr)

    def progress(desc):
        if bar is not None:
            bar.set_postfix_str(desc)
            bar.update(1)

    rows = run(QUICK_CONFIGS if args.quick else CONFIGS, cfg, args.per_step_max_T, progress)
    if bar is not None:
        bar.close()
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "lstm_table.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    text = (f"# SAB-LSTM vs nn.LSTM, {args.threads} thread(s), torch {torch.__version__}\n\n"
            f"Command: `python -m sab_kernels.bench.lstm_table{' --quick' if args.quick else ''} --threads {args.threads}`. "
            f"Median of repeated calls, every model timed in this one run; ratios are to nn.LSTM on the same line. "
            f"k_top={K_TOP}, k_trunc={K_TRUNC}, input size = H, {CLASSES}-class head on every step.\n\n"
            + table(rows) + "\n\n" + "\n".join(f"- {v}" for v in verdicts(rows)) + "\n")
    with open(os.path.join(out, "lstm_table.md"), "w") as f:
        f.write(text)
    plot(rows, os.path.join(out, "lstm_table.png"))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
