"""Step 6: one Markdown report (report.md), one CSV (gpu_check.csv) and PNGs in OUT; the benchmark's own
report, CSV and plots sit in OUT/bench/ and its tables are repeated at the end of report.md."""

from __future__ import annotations

import csv
import os
import re
from typing import Dict, List, Sequence

from .steps import StepResult
from .verdicts import Verdict

CSV_COLUMNS = ["step", "what", "T", "B", "value", "unit", "peak_mib", "note"]


def _table(header: Sequence[str], body: Sequence[Sequence]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in body])


def markdown(env: Dict[str, str], steps: List[StepResult], verdicts: List[Verdict], cpu_mode: bool, passed: bool) -> str:
    title = "# sab-kernels GPU check" + (" (CPU mode: tiny sizes, Triton interpreter; not a GPU verdict)" if cpu_mode else "")
    parts = [title, f"**Result: {'PASS' if passed else 'FAIL'}** (fails on a test failure, a mismatch against the reference "
             "or a broken step; performance targets are reported below, not failed)",
             _table(["", ""], [[k, v] for k, v in env.items()]),
             "## Steps", _table(["step", "result", "seconds", "summary"],
                                [[s.name, "ok" if s.ok else "**FAILED**", f"{s.seconds:.0f}", s.summary] for s in steps])]
    target_note = " (judged on CPU-mode numbers only to exercise the code: meaningless as GPU verdicts)" if cpu_mode else ""
    parts += [f"## GPU targets{target_note}",
              _table(["target", "figures", "verdict"], [[v.target, v.values, v.status] for v in verdicts])]
    for s in steps:
        if s.details:
            parts += [f"## {s.name}", s.details]
    bench = next((s for s in steps if s.name == "benchmark"), None)
    if bench is not None and bench.data.get("markdown"):
        body = re.sub(r"^(#+) ", lambda m: "#" * (len(m.group(1)) + 2) + " ", bench.data["markdown"], flags=re.M)
        parts += ["## Benchmark report (OUT/bench/results.md)", body]
    return "\n\n".join(parts) + "\n"


def write_csv(path: str, env: Dict[str, str], steps: List[StepResult], verdicts: List[Verdict]) -> None:
    with open(path, "w", newline="") as f:
        for k, v in env.items():
            f.write(f"# {k}: {v}\n")
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for s in steps:
            w.writerow(dict(step=s.name, what="step wall time", value=f"{s.seconds:.1f}", unit="s",
                            note=("ok" if s.ok else "FAILED") + ": " + s.summary))
            for r in s.rows:
                w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
        for v in verdicts:
            w.writerow(dict(step="target", what=v.target, value=v.status, note=v.values))


def plots(out_dir: str, steps: List[StepResult], footer: str) -> List[str]:
    """sab_lstm_step.png (SAB-LSTM vs nn.LSTM step time per T) and copy_task.png (held-out curves)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    model = next((s for s in steps if s.name == "sab-lstm" and s.data.get("times")), None)
    if model is not None:
        times = {(n, label): ms for (n, mode, label), ms in model.data["times"].items() if mode == "train"}
        names = list(dict.fromkeys(n for n, _ in times))
        labels = list(dict.fromkeys(label for _, label in times))
        fig, ax = plt.subplots(figsize=(7, 3.8))
        width = 0.8 / len(names)
        for i, n in enumerate(names):
            ax.bar([j + i * width for j in range(len(labels))], [times.get((n, label), float("nan")) for label in labels],
                   width, label=n)
        ax.set_xticks([j + width * (len(names) - 1) / 2 for j in range(len(labels))],
                      [label.replace(" ", "\n") for label in labels], fontsize=7)
        ax.set_yscale("log")
        ax.set_ylabel("ms per training step")
        ax.legend()
        ax.set_title("SAB-LSTM vs nn.LSTM: one training step", fontsize=10)
        fig.text(0.01, 0.01, footer, fontsize=6)
        fig.tight_layout(rect=(0, 0.04, 1, 1))
        written.append(os.path.join(out_dir, "sab_lstm_step.png"))
        fig.savefig(written[-1], dpi=100)
        plt.close(fig)
    copy = next((s for s in steps if s.name == "copy-task" and s.data.get("curve")), None)
    if copy is not None:
        curve = copy.data["curve"]
        fig, axes = plt.subplots(1, 2, figsize=(8, 3.4))
        steps_x = [r["step"] for r in curve]
        axes[0].plot(steps_x, [r["loss"] for r in curve], marker=".", label="loss (all steps)")
        axes[0].plot(steps_x, [r["ce10"] for r in curve], marker=".", label="ce10")
        axes[1].plot(steps_x, [r["acc10"] for r in curve], marker=".", label="acc10")
        axes[1].axhline(1 / 8, color="gray", ls=":", label="chance")
        for ax in axes:
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle("SAB-LSTM on the copy task (held-out batch)", fontsize=10)
        fig.text(0.01, 0.01, footer, fontsize=6)
        fig.tight_layout(rect=(0, 0.04, 1, 1))
        written.append(os.path.join(out_dir, "copy_task.png"))
        fig.savefig(written[-1], dpi=100)
        plt.close(fig)
    return written


def write_all(out_dir: str, env, steps, verdicts, cpu_mode: bool, passed: bool) -> List[str]:
    os.makedirs(out_dir, exist_ok=True)
    paths = [os.path.join(out_dir, "report.md"), os.path.join(out_dir, "gpu_check.csv")]
    with open(paths[0], "w") as f:
        f.write(markdown(env, steps, verdicts, cpu_mode, passed))
    write_csv(paths[1], env, steps, verdicts)
    footer = f"{env.get('GPU') or env.get('machine', '')} | torch {env.get('torch')} | triton {env.get('triton')}"
    try:
        return paths + plots(out_dir, steps, footer)
    except ImportError as exc:  # matplotlib missing on a machine installed with --no-deps: the report stands alone
        print(f"gpu-check: PNGs skipped ({exc})")
        return paths
