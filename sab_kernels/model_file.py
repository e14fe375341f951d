"""`python -m sab_kernels.model_file RUN_DIR`: write RUN_DIR/model.pt from a sab-train run's latest checkpoint.

The format, written and read by sab_kernels/training/model_file.py: a trained model in one file that anyone can
load safely and re-evaluate.

    {"format": "sab-kernels/model", "version": 1,
     "build": {kind, input_size, hidden_size, output_size, k_top, k_att, k_trunc, attn_dim},   # build_model's arguments
     "task": {name, seq_len, input, permute, seed, data, [stateful, memory_window]},          # make_task's arguments
     "state_dict": {...}, "metrics": {...}, "train_args": {...}}   # the sab-train settings, when it wrote the file

`python -m sab_kernels.model_file RUN_DIR` writes RUN_DIR/model.pt from the latest checkpoint of a `sab-train` run
(sab-train writes it itself when a run reaches --steps).

Only plain values (tensors, numbers, strings, lists, dicts): `load_model` reads it with
`torch.load(..., weights_only=True)`, so a file from elsewhere cannot run code. Written atomically (a temporary
file in the same folder, fsync, rename): a failed save leaves the previous file intact.
"""

from __future__ import annotations

import os
import sys

# The code lives in sab_kernels/training/model_file.py; its names stay importable from here.
from .training.model_file import (BUILD_KEYS, FORMAT, OPTIONAL_TASK_KEYS, TASK_KEYS, VERSION, export_checkpoint,
                                  load_model, model_description, save_model)

__all__ = ["FORMAT", "VERSION", "BUILD_KEYS", "TASK_KEYS", "OPTIONAL_TASK_KEYS", "save_model", "load_model",
           "model_description", "export_checkpoint", "main"]


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or not os.path.isfile(os.path.join(argv[0], "checkpoint.pt")):
        print("usage: python -m sab_kernels.model_file RUN_DIR (a sab-train --out folder holding checkpoint.pt)",
              file=sys.stderr)
        return 2
    try:
        print("wrote", export_checkpoint(argv[0]))
    except ValueError as exc:
        print(f"sab_kernels.model_file: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
