"""Where SAB's update points: the replay part of the gradient against the local part, and the attention, measured
on a trained SAB model (any task).

Usage: python bench/results/training/replay_probe.py CHECKPOINT [CHECKPOINT ...] [--batches 40]
    -> one Markdown table row per checkpoint (checkpoint.pt of a sab-train --model sab run)

For each checkpoint, the next `--batches` training batches are drawn exactly as sab-train draws them (the run's
seed and step; a --stateful run's chunks continue from the carried state in the checkpoint, each chunk's state
carried on), with the weights held fixed, and each batch's gradient is taken twice on the per-step path:
- **SAB**: as trained, sparse replay included;
- **no replay hops**: the same batch with every slot written detached, so gradient that reaches a slot stops
  there (what remains is the local truncated BPTT plus the attention's own parameters).
Reported, as medians over the batches unless stated:
- the pre-clip norms of both (and SAB's largest), and the share of batches whose SAB norm passes the clip (1.0);
- cos(SAB, no hops): how much of the update points where the local gradient points;
- "local share after clipping": the length of the clipped SAB gradient's projection on the no-hop direction,
  over the no-hop gradient's own length. Near 1: the update keeps the local step truncated BPTT would take.
  Near 0: the clip spends the update on the replay part and the local step all but vanishes;
- the attention: weight on the first slot (the sequence's zero initial state, attention's "nothing" option), and
  the summary's norm relative to the provisional state's.
`--eps E` measures the same weights with the sparsifier's ε set to E instead of the trained one: the weights'
gradient carries a factor 1/(Σ relu(s - τ) + ε), which is large where the kept scores nearly tie with τ, and each
replay hop multiplies such factors.
"""

import argparse
import os
import statistics
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
sys.path.insert(0, ROOT)
from sab_kernels.nn import SparseAttentiveMemory  # noqa: E402
from sab_kernels.nn.models import carry_state  # noqa: E402
from sab_kernels.training.checkpoint import unpack_state  # noqa: E402
from sab_kernels.training.loop import batch_generator  # noqa: E402
from sab_kernels.training.model_file import checkpoint_model, model_description  # noqa: E402

real_append = SparseAttentiveMemory.append
CLIP = 1.0


def gradient(model, task, x, y, state, hops: bool, trace=None):
    """(flat parameter gradient, next state) of one batch, with or without replay hops."""
    SparseAttentiveMemory.append = real_append if hops else (lambda self, st, h: real_append(self, st, h.detach()))
    try:
        model.zero_grad(set_to_none=True)
        out, new_state = model.core(x, state, trace=trace)
        task.loss(model.head(out), y).backward()
    finally:
        SparseAttentiveMemory.append = real_append
    flat = torch.cat([p.grad.double().flatten() for p in model.parameters() if p.grad is not None])
    return flat, new_state


def load(path):
    """(checkpoint, task, model) of a sab-train SAB checkpoint."""
    ckpt, task, model = checkpoint_model(path, ROOT)
    if ckpt["args"]["model"] != "sab":
        raise SystemExit(f"{path}: a --model sab checkpoint is needed, this is --model {ckpt['args']['model']}")
    return ckpt, task, model


def probe(path, batches, eps=None):
    ckpt, task, model = load(path)
    a = ckpt["args"]
    _, run = model_description(a, task)  # stateful / memory_window, with the defaults of checkpoints that predate them
    model.core.path = "step"
    if eps is not None:
        for layer in model.core.layers:
            layer.memory.eps = eps
    eps = model.core.layers[0].memory.eps
    state = unpack_state(ckpt.get("carried"))
    rows = []
    for i in range(batches):
        if run["stateful"]:
            x, y, new_epoch = task.stream_batch(a["batch_size"], ckpt["step"] + i)
            state = None if new_epoch else state
        else:
            x, y = task.batch(a["batch_size"], batch_generator(a["seed"], 0, ckpt["step"] + i))
        cut, _ = gradient(model, task, x, y, state, hops=False)
        trace = []
        full, next_state = gradient(model, task, x, y, state, hops=True, trace=trace)
        state = carry_state(next_state, run["memory_window"]) if run["stateful"] else None
        scale = min(1.0, CLIP / full.norm().item())
        unit = cut / cut.norm()
        first = [float((r["weights"].detach() * (r["indices"] == 0)).sum(1).mean()) for r in trace if r["weights"] is not None]
        ratio = [float(r["summary"].detach().norm(dim=1).mean() / r["h_hat"].detach().norm(dim=1).mean()) for r in trace]
        rows.append(dict(full=full.norm().item(), cut=cut.norm().item(), cos=float(full @ unit / full.norm()),
                         local=float(scale * (full @ unit) / cut.norm()), first=statistics.mean(first),
                         summary=statistics.mean(ratio)))
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    clipped = sum(r["full"] > CLIP for r in rows) / len(rows)
    return ckpt["step"], eps, med, clipped, max(r["full"] for r in rows)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--batches", type=int, default=40)
    p.add_argument("--eps", type=float, default=None, help="the sparsifier's ε to measure with (default: the trained one)")
    args = p.parse_args()
    torch.set_num_threads(1)
    print("| checkpoint | updates | ε | norm, SAB (max) | norm, no replay hops | batches clipped | cos(SAB, no hops) | "
          "local share after clipping | weight on the first slot | summary / provisional state |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for path in args.checkpoints:
        step, eps, m, clipped, peak = probe(path, args.batches, args.eps)
        name = os.path.relpath(path, HERE) if os.path.abspath(path).startswith(HERE) else path
        print(f"| `{name}` | {step:,} | {eps:g} | {m['full']:.3g} ({peak:.3g}) | {m['cut']:.3g} | {clipped:.0%} | {m['cos']:.3f} | "
              f"{m['local']:.3f} | {m['first']:.3f} | {m['summary']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
