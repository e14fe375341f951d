"""Time one training step (forward + backward + Adam) of every model kind on the copy task, interleaved so
that all kinds see the same machine load.  Usage: python bench/results/training/step_time.py T K_ATT"""

import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
from sab_kernels.nn import build_model  # noqa: E402
from sab_kernels.tasks import CopyTask  # noqa: E402

torch.set_num_threads(1)
T, k_att = int(sys.argv[1]), int(sys.argv[2])
kinds = [("sab", "cpu"), ("sab", "reference"), ("dense", "cpu"), ("tbptt", "cpu"), ("bptt", "cpu"), ("lstm", "cpu")]
models = {k: build_model(k[0], 10, 64, 10, k_top=5, k_att=k_att, k_trunc=5, backend=k[1]) for k in kinds}
opts = {k: torch.optim.Adam(m.parameters(), 1e-3) for k, m in models.items()}
task = CopyTask(T)
x, y = task.batch(64, torch.Generator().manual_seed(0))
times = {k: [] for k in kinds}
for rep in range(6):
    for k in kinds:
        t0 = time.perf_counter()
        loss = task.loss(models[k](x), y)
        opts[k].zero_grad()
        loss.backward()
        opts[k].step()
        times[k].append(time.perf_counter() - t0)
print(f"| model | op backend | ms/step (T={T}, seq {T + 20}, k_att {k_att}, batch 64, hidden 64) | steps/s |")
print("|---|---|---|---|")
for k in kinds:
    t = sorted(times[k][1:])[len(times[k][1:]) // 2]
    print(f"| {k[0]} | {k[1] if k[0] in ('sab', 'dense') else '-'} | {1e3 * t:.1f} | {1 / t:.2f} |")
