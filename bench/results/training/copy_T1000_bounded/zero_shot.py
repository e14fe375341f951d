"""How much of the bounded-memory copy result is fine-tuning: the copy model trained at T = 300 with the paper's
unbounded memory (copy_T300_h128/sab_seed2/model.pt), run unchanged with a bounded memory, against the same
model fine-tuned with that memory at T = 1000 (sab_W16_M16/model.pt).

Usage: python bench/results/training/copy_T1000_bounded/zero_shot.py [T ...]   (default 300 1000 2000 5000)
Evaluates acc10 on the copy test sets (tasks/seeds.py: set 0 of the test split at each delay, 256 sequences),
writes zero_shot.md beside this file and prints it.
"""

import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(HERE)))))
from sab_kernels.nn import build_model  # noqa: E402
from sab_kernels.tasks import copy_transfer  # noqa: E402

torch.set_num_threads(1)
delays = [int(t) for t in sys.argv[1:]] or [300, 1000, 2000, 5000]
SOURCE = os.path.join(HERE, "..", "copy_T300_h128", "sab_seed2", "model.pt")
TUNED = os.path.join(HERE, "sab_W16_M16", "model.pt")
rows = []
for label, path, bounds in [
    ("trained at T=300, unbounded memory (as shipped)", SOURCE, {}),
    ("the same weights, bounded W=M=16, no training", SOURCE, dict(recent_slots=16, relevant_slots=16)),
    ("fine-tuned at T=1000 with W=M=16 (sab_W16_M16)", TUNED, dict(recent_slots=16, relevant_slots=16)),
]:
    blob = torch.load(path, map_location="cpu", weights_only=True)
    b = blob["build"]
    model = build_model("sab", b["input_size"], b["hidden_size"], b["output_size"], b["k_top"], b["k_att"],
                        b["k_trunc"], b["attn_dim"], "cpu", eps=b["eps"], **bounds)
    model.load_state_dict(blob["state_dict"])
    res = copy_transfer(model, delays, 256, 64)
    rows.append((label, [res[T]["acc10"] for T in delays]))
    print(label, rows[-1][1], flush=True)
text = ("# Copy with a bounded memory: zero-shot against fine-tuned\n\n"
        "`python bench/results/training/copy_T1000_bounded/zero_shot.py`: acc10 on the copy test sets (256 sequences "
        "per delay; chance 0.125).\n\n"
        "| model | " + " | ".join(f"T={T}" for T in delays) + " |\n|---|" + "---|" * len(delays) + "\n"
        + "\n".join(f"| {label} | " + " | ".join(f"{a:.3f}" for a in accs) + " |" for label, accs in rows) + "\n")
with open(os.path.join(HERE, "zero_shot.md"), "w") as f:
    f.write(text)
print(text)
