"""Transfer table of the paper (SPEC section 3): the copy models trained at T=100 evaluated at longer delays.

Usage: python bench/results/training/transfer_T100.py [T ...]   (default 100 200 300 400 1000 2000 5000)
Loads copy_T100/{sab,tbptt,lstm}/checkpoint.pt, evaluates acc10 on 256 fresh sequences per delay with
`sab_kernels.tasks.copy_transfer` (the same seed for every model), writes copy_T100/transfer.json and prints
a Markdown table.
"""

import json
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(HERE))))
from sab_kernels.nn import build_model  # noqa: E402
from sab_kernels.tasks import copy_transfer  # noqa: E402

torch.set_num_threads(1)
delays = [int(t) for t in sys.argv[1:]] or [100, 200, 300, 400, 1000, 2000, 5000]
labels = {"sab": "SAB (k_top 5, k_trunc 5)", "tbptt": "truncated BPTT (k_trunc 5)", "lstm": "full BPTT (torch.nn.LSTM)"}
table = {}
for kind in labels:
    ckpt = torch.load(os.path.join(HERE, "copy_T100", kind, "checkpoint.pt"), map_location="cpu", weights_only=False)
    a = ckpt["args"]
    model = build_model(kind, 10, a["hidden"], 10, a["k_top"], a["k_att"], a["k_trunc"] or None, a["attn_dim"], "cpu")
    model.load_state_dict(ckpt["model"])
    res = copy_transfer(model, delays, 256, 64, a["input"], seed=20_000 + a["seed"])
    table[kind] = {"steps": ckpt["step"], **{str(T): round(m["acc10"], 4) for T, m in res.items()}}
    print(kind, table[kind], flush=True)
with open(os.path.join(HERE, "copy_T100", "transfer.json"), "w") as f:
    json.dump(table, f, indent=1)
print("| model (trained at T=100) | steps | " + " | ".join(f"T={T}" for T in delays) + " |")
print("|---|---|" + "---|" * len(delays))
for kind, row in table.items():
    print(f"| {labels[kind]} | {row['steps']} | " + " | ".join(f"{row[str(T)]:.3f}" for T in delays) + " |")
