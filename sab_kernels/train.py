"""`python -m sab_kernels.train TASK [options]` (console script `sab-train`): train a model on a SAB task.

    python -m sab_kernels.train copy --model sab --seq-len 20 --steps 3000 --out runs/copy_sab
    torchrun --nproc_per_node 2 -m sab_kernels.train copy --model sab ...   # DistributedDataParallel

Writes to --out: metrics.csv (one row per evaluation), curve.png (learning curve), checkpoint.pt (model,
optimizer, step; --resume continues from it) and final.json, each replaced atomically (temporary file,
fsync, rename), so a run killed mid-save keeps its previous checkpoint. The last line on stdout is one JSON
object with the final metrics, e.g. {"task": "copy", "model": "sab", "acc10": 0.43, "ce10": 1.2, ...}
(accuracies are fractions). Under torchrun each rank draws its own batches (seeded by seed, rank, step);
rank 0 alone evaluates and writes. Batches depend only on (seed, rank, step), so a resumed run sees the
same data as an uninterrupted one.

Every argument is checked before any work (the data file, the output folder, the checkpoint to resume):
a bad one exits with status 2 and a one-line message, and nothing is written. An --out that already holds
a run is refused unless --resume (continue it) or --overwrite (replace it) is given. --resume refuses
hyper-parameters that differ from the checkpoint's (listing them); --steps, --eval-every, --transfer,
--transfer-size, --threads, --device, --backend and --no-progress may change.
"""

from __future__ import annotations

# The command-line entry point only; the code lives in sab_kernels/training/. The names below stay importable
# from here for code written against the single-module sab_kernels.train.
from .training.args import BACKENDS, check_args, parse_args, transfer_lengths
from .training.checkpoint import OUTPUTS, RESUME_MUST_MATCH, load_checkpoint
from .training.cli import main
from .training.evaluation import evaluate_run as evaluate
from .training.loop import batch_generator, clip_gradients, run
from .training.records import plot_curve, read_rows

__all__ = ["main", "parse_args", "check_args", "transfer_lengths", "run", "evaluate", "clip_gradients",
           "batch_generator", "load_checkpoint", "read_rows", "plot_curve", "RESUME_MUST_MATCH", "OUTPUTS", "BACKENDS"]

if __name__ == "__main__":
    main()
