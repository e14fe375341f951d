"""A run's records: metrics.csv (one row per evaluation) and curve.png, both written atomically."""

from __future__ import annotations

import csv
import io
import math
from typing import List

from .._io import atomic_write


def write_csv(rows: List[dict], path: str) -> None:
    """metrics.csv with the columns of every row, in first-seen order (a run resumed from an older checkpoint
    gains columns)."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(dict.fromkeys(k for r in rows for k in r)), restval="")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, lambda f: f.write(text.getvalue().encode("utf-8")))


def read_rows(path: str) -> List[dict]:
    """metrics.csv back as a list of {column: float} (step as int)."""
    with open(path, newline="") as f:
        return [{k: (int(v) if k == "step" else float(v) if v != "" else math.nan) for k, v in row.items()}
                for row in csv.DictReader(f)]


def plot_curve(rows: List[dict], path: str, title: str) -> None:
    """Learning curve: every metric column against step, one panel each, PNG via the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [k for k in dict.fromkeys(k for r in rows for k in r) if k not in ("step", "seconds")]
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.2), squeeze=False)
    steps = [r["step"] for r in rows]
    for ax, name in zip(axes[0], names):
        ax.plot(steps, [r.get(name, math.nan) for r in rows], marker=".")
        if name == "grad_norm_max":
            ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)
