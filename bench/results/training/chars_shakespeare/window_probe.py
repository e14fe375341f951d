"""How much a trained SAB language model leans on the slots it carried in from earlier chunks.

Usage: python bench/results/training/chars_shakespeare/window_probe.py [CHECKPOINT] [--windows 1 8 32 256 0]
       (needs data/shakespeare.txt: make shakespeare; default: sab_seed0/checkpoint.pt)

Evaluates the checkpoint's weights on the whole test split with the carried memory cut to each window between
chunks (training used 256: the first slot and the newest 255; 0 keeps every slot). Window 1 carries the first
slot only, so attention reaches back within the current 100-character chunk and no further. A bpc that rises
as the window shrinks says the model depends on the long-range slots; it does not say they beat having no memory
(truncated BPTT is that comparison).
"""

import argparse
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(HERE))))
sys.path.insert(0, ROOT)
from sab_kernels.tasks.chars import evaluate_streams  # noqa: E402
from sab_kernels.training.model_file import checkpoint_model  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoint", nargs="?", default=os.path.join(HERE, "sab_seed0", "checkpoint.pt"))
    p.add_argument("--windows", type=int, nargs="+", default=[1, 8, 32, 256, 0])
    args = p.parse_args()
    torch.set_num_threads(1)
    ckpt, task, model = checkpoint_model(args.checkpoint, ROOT)
    a = ckpt["args"]
    print(f"| memory window between chunks (SAB, {ckpt['step']:,} updates) | test bpc |\n|---|---|")
    for window in args.windows:
        bpc = evaluate_streams(model, task, a["batch_size"], window)["bpc"]
        trained = " (as trained)" if window == a["memory_window"] else ""
        print(f"| {window or 'every slot'}{trained} | {bpc:.4f} |", flush=True)


if __name__ == "__main__":
    main()
