"""Collect the copy-task runs under this folder into results.csv / results.json / copy_curves.png and print
the markdown tables of RESULTS.md.  Usage: python bench/results/training/summarize.py"""

import csv
import glob
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(HERE))))
from sab_kernels.training.records import read_rows  # noqa: E402

ORDER = {"sab": 0, "dense": 1, "tbptt": 2, "bptt": 3, "lstm": 4}
COLOR = {"sab": "C0", "dense": "C4", "tbptt": "C1", "bptt": "C3", "lstm": "C2"}
LABEL = {"sab": "SAB (sparse replay)", "dense": "SAB-dense (softmax over all slots)", "tbptt": "truncated BPTT",
         "bptt": "full BPTT (SABLSTM, no memory)", "lstm": "full BPTT (torch.nn.LSTM)"}


def main():
    runs = []
    for path in sorted(glob.glob(os.path.join(HERE, "*", "*", "final.json"))):
        with open(path) as f:
            final = json.load(f)
        final["group"] = os.path.basename(os.path.dirname(os.path.dirname(path)))
        final["dir"] = os.path.dirname(path)
        runs.append(final)
    runs.sort(key=lambda r: (r["group"], ORDER.get(r["model"], 9)))
    rows = []
    for r in runs:
        curve = read_rows(os.path.join(r["dir"], "metrics.csv"))
        best = max(curve, key=lambda c: c["acc10"])
        row = {"group": r["group"], "task": r["task"], "seq_len": r["seq_len"], "model": r["model"], "steps": r["step"],
               "acc10": r["acc10"], "ce10": r["ce10"], "best_acc10": best["acc10"], "best_step": best["step"],
               "train_seconds": r["train_seconds"]}
        for T, m in (r.get("transfer") or {}).items():
            row[f"acc10@T={T}"] = m["acc10"]
        rows.append(row)
    fields = []
    for row in rows:
        fields += [k for k in row if k not in fields]
    with open(os.path.join(HERE, "results.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    with open(os.path.join(HERE, "results.json"), "w") as f:
        json.dump(rows, f, indent=1)

    for group in sorted({r["group"] for r in rows}):
        g = [r for r in rows if r["group"] == group]
        transfer = sorted((k for k in fields if k.startswith("acc10@") and any(k in r for r in g)),
                          key=lambda k: int(k.split("=")[1]))
        print(f"\n### {group} (T={g[0]['seq_len']})\n")
        print("| " + " | ".join(["model", "steps", "acc10", "CE10", "best acc10 (step)", "train time (s)", *transfer]) + " |")
        print("|---" * (6 + len(transfer)) + "|")
        for r in g:
            cells = [LABEL.get(r["model"], r["model"]), r["steps"], f"{r['acc10']:.3f}", f"{r['ce10']:.3f}",
                     f"{r['best_acc10']:.3f} ({r['best_step']})", f"{r['train_seconds']:.0f}"]
            cells += [f"{r[k]:.3f}" if k in r else "" for k in transfer]
            print("| " + " | ".join(str(c) for c in cells) + " |")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({r["group"] for r in runs})
    ncols = min(4, len(groups))
    nrows = -(-len(groups) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5 * ncols, 3.8 * nrows), squeeze=False)
    for ax in axes.flat[len(groups):]:
        ax.axis("off")
    for ax, group in zip(axes.flat, groups):
        for r in [r for r in runs if r["group"] == group]:
            curve = read_rows(os.path.join(r["dir"], "metrics.csv"))
            ax.plot([c["step"] for c in curve], [c["acc10"] for c in curve], marker=".", label=LABEL.get(r["model"], r["model"]),
                    color=COLOR.get(r["model"]))
        ax.axhline(0.125, color="gray", ls=":", label="chance (1/8)")
        ax.set_title(f"{group} (T={[r for r in runs if r['group'] == group][0]['seq_len']})")
        ax.set_xlabel("step")
        ax.set_ylabel("last-10 accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(HERE, "copy_curves.png"), dpi=100)


if __name__ == "__main__":
    main()
