"""Where the copy task's gradient spikes come from: sparse replay's hops through the memory.

Usage: python bench/results/training/spike_probe.py [--updates N] [T ...]   (default 30 updates; T 100 200)

For each delay T, the paper-setting SAB-LSTM (hidden 128, k_top 5, k_att 2, k_trunc 5, seed 1) is trained as
`sab-train copy --seed 1` trains it (Adam lr 1e-3, clip 1.0, the same batches), on the per-step path with a
trace. At every update the same batch is also run with the slots written *detached* ("no replay hops"):
gradient that reaches a slot stops there instead of flowing on into the step that wrote it, and from that step
through its own attention to older slots, and so on. Both use the same weights; only the first one steps.

Prints, per update, the pre-clip parameter-gradient norm of both, and the largest per-step ||dL/dh_t||; draws
spike_probe.png: ||dL/dh_t|| against t at the update with the largest norm, for both.
"""

import argparse
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(HERE))))
from sab_kernels.nn import SparseAttentiveMemory, build_model  # noqa: E402
from sab_kernels.tasks import make_task  # noqa: E402
from sab_kernels.training.loop import batch_generator  # noqa: E402

real_append = SparseAttentiveMemory.append


def grads(model, task, x, y, hops: bool):
    """(parameter-gradient norm, per-step max-over-batch ||dL/dh_t|| (T,)) with or without replay hops; leaves
    the gradients in the parameters."""
    SparseAttentiveMemory.append = real_append if hops else (lambda self, st, h: real_append(self, st, h.detach()))
    try:
        model.zero_grad(set_to_none=True)
        trace = []
        out, _ = model.core(x, trace=trace)
        for r in trace:
            r["h"].retain_grad()
        task.loss(model.head(out), y).backward()
    finally:
        SparseAttentiveMemory.append = real_append
    per_step = torch.stack([r["h"].grad.norm(dim=1).max() for r in trace])
    norm = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in model.parameters())).item()
    return norm, per_step


def run(T, updates):
    torch.manual_seed(1)  # sab-train --seed 1 builds its model right after this
    task = make_task("copy", T)
    model = build_model("sab", task.input_size, 128, task.output_size, 5, 2, 5, None, "cpu")
    model.core.path = "step"
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    rows = []
    for step in range(updates):
        x, y = task.batch(64, batch_generator(1, 0, step))
        cut, cut_steps = grads(model, task, x, y, hops=False)
        full, full_steps = grads(model, task, x, y, hops=True)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        rows.append((step + 1, full, cut, full_steps, cut_steps))
        print(f"| {T} | {step + 1} | {full:.3g} | {cut:.3g} | {full_steps.max().item():.3g} | "
              f"{cut_steps.max().item():.3g} |", flush=True)
    return rows


def main():
    p = argparse.ArgumentParser()
    p.add_argument("delays", nargs="*", type=int, default=[100, 200])
    p.add_argument("--updates", type=int, default=30)
    args = p.parse_args()
    torch.set_num_threads(1)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(args.delays), figsize=(5 * len(args.delays), 3.6), squeeze=False)
    print("| T | update | gradient norm, SAB | same batch, no replay hops | max_t ||dL/dh_t||, SAB | no hops |")
    print("|---|---|---|---|---|---|")
    for ax, T in zip(axes[0], args.delays):
        rows = run(T, args.updates)
        worst = max(rows, key=lambda r: r[1])
        ax.semilogy(worst[3].numpy(), label=f"SAB (norm {worst[1]:.2g})")
        ax.semilogy(worst[4].numpy(), label=f"no replay hops (norm {worst[2]:.2g})")
        ax.set_title(f"copy T={T}, update {worst[0]}: max over batch ||dL/dh_t||", fontsize=9)
        ax.set_xlabel("step t")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(HERE, "spike_probe.png"), dpi=100)


if __name__ == "__main__":
    main()
