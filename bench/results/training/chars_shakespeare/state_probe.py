"""Why the first stateful SAB run on the chars task failed: a memory window that dropped the first slot.

Usage: python bench/results/training/chars_shakespeare/state_probe.py   (needs data/shakespeare.txt: make shakespeare)

Loads the checkpoint of that run (sab_drop_first_slot/, 1,500 updates, trained while the window kept the newest
256 slots), reads the first 22 chunks of the training streams with the state carried, and prints the largest |h|,
|c| and memory value at the end, for three ways of bounding the memory between chunks:
  all slots         no window;
  newest 256        the rule that run trained with;
  first + newest 255  sab-train's rule now (nn.models.carry_state).
"""

import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(HERE))))
sys.path.insert(0, ROOT)
from sab_kernels.nn import SABState, build_model  # noqa: E402
from sab_kernels.nn.models import carry_state  # noqa: E402
from sab_kernels.tasks import make_task  # noqa: E402
from sab_kernels.training.checkpoint import load_checkpoint  # noqa: E402


def newest_only(state, window):
    state = state.detach()
    return SABState(state[0], state[1], state.memory[:, -window:], state.step)


torch.set_num_threads(1)
ckpt = load_checkpoint(os.path.join(HERE, "sab_drop_first_slot", "checkpoint.pt"))
a = ckpt["args"]
task = make_task("chars", a["seq_len"], "onehot", os.path.join(ROOT, a["data"]))
model = build_model("sab", task.input_size, a["hidden"], task.output_size, a["k_top"], a["k_att"], a["k_trunc"], None, "cpu")
model.load_state_dict(ckpt["model"])
rules = {"all slots": lambda s: carry_state(s, 0), "newest 256": lambda s: newest_only(s, 256),
         "first + newest 255": lambda s: carry_state(s, 256)}
print("| carried memory | slots after 22 chunks | max abs h | max abs c | max abs memory |")
print("|---|---|---|---|---|")
for name, carry in rules.items():
    state = None
    with torch.no_grad():
        for j in range(22):
            x, y, _ = task.stream_batch(a["batch_size"], j)
            _, state = model.forward_chunk(x, state)
            state = carry(state)
    print(f"| {name} | {state.memory.shape[1]} | {state.h.abs().max():.2f} | {state.c.abs().max():.1f} | "
          f"{state.memory.abs().max():.2f} |")
